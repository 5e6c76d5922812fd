//! The one-line install end to end, against a real relay (its API over
//! TLS) and the real dockerd: the command `token create --install-command`
//! prints, run with the script's `--root` (a temporary directory standing
//! for the host's /, so no systemd), installs the agent the relay serves,
//! the agent enrols and the node answers `docker ps` through the relay;
//! run again it upgrades in place with the same identity; `--uninstall`
//! keeps the identity, `--purge` removes it and revokes the node. A
//! tampered binary and a relay with another CA are refused with nothing
//! installed.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// These tests drive processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{docker_endpoint, ApiClient, Docker, Proc, Relay};

fn tls_relay(state: &Path) -> Relay {
    Relay::start_with(state, &["--api-tls"]).unwrap()
}

/// A client certificate for the relay's TLS API, and a client with it.
fn api_client(relay: &Relay, dir: &Path) -> ApiClient {
    relay.client_cert("default", "client", dir).unwrap();
    ApiClient::new(relay.api, dir).unwrap()
}

/// `docker ps` on `node` through the relay's TLS API.
fn docker_ps(relay: &Relay, certs: &Path, node: &str) {
    let mut cmd = Docker::new(relay.docker_host(node)).cmd(["ps"]);
    let out = cmd
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker ps via the relay failed: {}",
        text(&out)
    );
}

/// Runs a shell line; returns its output, whatever the status.
fn sh(line: &str) -> Output {
    Command::new("bash")
        .args(["-c", line])
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The install command for `relay`, as `token create --install-command`
/// prints it, made to run here: no sudo, under `root`, this node id and
/// the suite's dockerd.
fn install_line(relay: &Relay, root: &Path, node: &str) -> String {
    let url = format!("https://{}", relay.api);
    let line = relay
        .cli_last_line(&["token", "create", "--install-command", "--url", &url])
        .unwrap();
    assert!(
        line.contains("sha256sum -c") && line.contains("--cacert") && !line.contains(" -k "),
        "the command must check the relay's CA, never trust it blindly: {line}"
    );
    format!(
        "{} --root {} --node-id {node} --docker {}",
        line.replace("sudo ", ""),
        root.display(),
        docker_endpoint()
    )
}

/// What the script printed as the command to run the agent (no systemd).
fn run_command(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

fn start(cmd: &str) -> Proc {
    let child = Command::new("bash")
        .args(["-c", &format!("exec {cmd}")])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Proc::new(child, "installed agent")
}

fn serial(root: &Path) -> String {
    let pem = std::fs::read_to_string(root.join("var/lib/tunnelgate-agent/node.pem")).unwrap();
    let cert = tunnelgate_session::tls::certs_from_pem(&pem).unwrap();
    tunnelgate_session::tls::subject(&cert[0]).unwrap().serial
}

fn agent_status(root: &Path) -> Output {
    Command::new(root.join("usr/local/bin/tunnelgate-agent"))
        .arg("status")
        .arg("--state-dir")
        .arg(root.join("var/lib/tunnelgate-agent"))
        .output()
        .unwrap()
}

fn wait_status(root: &Path, connected: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_status(root).status.success() != connected {
        assert!(
            Instant::now() < deadline,
            "`tunnelgate-agent status` never said connected={connected}:\n{}",
            text(&agent_status(root))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_one_line_install_upgrades_uninstalls_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let relay = tls_relay(&dir.path().join("relay"));
    let root = dir.path().join("host");
    let certs = dir.path().join("certs");
    let api = api_client(&relay, &certs);

    let out = sh(&install_line(&relay, &root, "installed"));
    assert!(out.status.success(), "install failed:\n{}", text(&out));
    let said = text(&out);
    for step in ["1/6", "2/6", "3/6", "4/6", "5/6"] {
        assert!(
            said.contains(step),
            "the script did not report step {step}:\n{said}"
        );
    }
    let bin = root.join("usr/local/bin/tunnelgate-agent");
    let config = std::fs::read_to_string(root.join("etc/tunnelgate/agent.toml")).unwrap();
    assert!(config.contains("node_id = \"installed\""), "{config}");
    let mut agent = start(&run_command(&out));
    api.wait_for_node("installed").unwrap();
    docker_ps(&relay, &certs, "installed");
    wait_status(&root, true);
    let report = text(&agent_status(&root));
    assert!(
        report.contains("connected to relay") && report.contains("reachable"),
        "{report}"
    );
    let first = serial(&root);

    // Again: an upgrade in place, the same node.
    let out = sh(&install_line(&relay, &root, "installed"));
    assert!(out.status.success(), "reinstall failed:\n{}", text(&out));
    assert!(text(&out).contains("upgraded") && text(&out).contains("keeping its identity"));
    agent.kill();
    wait_status(&root, false);
    let mut agent = start(&run_command(&out));
    wait_status(&root, true);
    docker_ps(&relay, &certs, "installed");
    assert_eq!(
        serial(&root),
        first,
        "an upgrade must keep the node's identity"
    );

    // Uninstall: gone, identity kept.
    agent.kill();
    let uninstall = format!("{} --uninstall --root {}", script(&relay), root.display());
    let out = sh(&uninstall);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!bin.exists(), "--uninstall left the binary");
    assert!(root.join("var/lib/tunnelgate-agent/node.pem").exists());

    // Purge (after installing again): identity gone, node revoked.
    let out = sh(&install_line(&relay, &root, "installed"));
    assert!(out.status.success(), "{}", text(&out));
    let kept = dir.path().join("kept-identity");
    std::fs::create_dir_all(&kept).unwrap();
    for f in ["node.pem", "ca.pem"] {
        std::fs::copy(root.join("var/lib/tunnelgate-agent").join(f), kept.join(f)).unwrap();
    }
    let out = sh(&format!(
        "{} --purge --root {}",
        script(&relay),
        root.display()
    ));
    assert!(out.status.success(), "purge failed:\n{}", text(&out));
    assert!(!root.join("var/lib/tunnelgate-agent").exists() && !bin.exists());
    relay
        .wait_log(
            "node revoked at its host's request",
            Duration::from_secs(10),
        )
        .unwrap();
    // The old identity, copied aside, is refused from now on.
    let refused = Command::new(support::agent_bin())
        .args([
            "--relay",
            &relay.agent.to_string(),
            "--node-id",
            "installed",
        ])
        .args(["--docker", &docker_endpoint(), "--state-dir"])
        .arg(&kept)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut refused = Proc::new(refused, "purged agent");
    relay
        .wait_log("was revoked", Duration::from_secs(30))
        .unwrap();
    refused.kill();
}

/// Fetches the relay's install script (trusting its CA) into a shell
/// line that runs it.
fn script(relay: &Relay) -> String {
    format!("curl -fsSk https://{}/install.sh | sh -s --", relay.api)
}

#[test]
fn a_tampered_binary_and_another_relays_ca_install_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = tls_relay(&dir.path().join("relay"));
    let other = tls_relay(&dir.path().join("other"));
    let root = dir.path().join("host");

    // The command made for `relay`, pointed at `other`: its CA is not the
    // one the command names.
    let line = install_line(&relay, &root, "n1");
    let hash = line
        .split("--ca-sha256 ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = sh(&format!(
        "{} --token x --ca-sha256 {hash} --root {} --url https://{}",
        script(&other),
        root.display(),
        other.api
    ));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("another relay") && text(&out).contains("Nothing was installed"),
        "{}",
        text(&out)
    );
    assert!(
        !root.exists(),
        "something was installed from the wrong relay"
    );

    // A mirror of `relay` whose binary was altered: its checksum no longer
    // matches.
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(mirror.join("download")).unwrap();
    let fetch = |path: &str, to: PathBuf| {
        let out = sh(&format!(
            "curl -fsSk https://{}{path} -o {}",
            relay.api,
            to.display()
        ));
        assert!(out.status.success(), "{path}: {}", text(&out));
    };
    let name = format!("tunnelgate-agent-linux-{}", std::env::consts::ARCH);
    fetch("/ca.pem", mirror.join("ca.pem"));
    fetch("/install.sh", mirror.join("install.sh"));
    fetch(
        &format!("/download/{name}.sha256"),
        mirror.join("download").join(format!("{name}.sha256")),
    );
    std::fs::write(
        mirror.join("download").join(&name),
        b"#!/bin/sh\necho evil\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&mirror)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Proc::new(server, "mirror");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the mirror did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = sh(&format!(
        "sh {} --token x --ca-sha256 {hash} --root {} --url http://127.0.0.1:{port}",
        mirror.join("install.sh").display(),
        root.display()
    ));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("3/6") && text(&out).contains("Nothing was installed"),
        "{}",
        text(&out)
    );
    assert!(!root.join("usr/local/bin/tunnelgate-agent").exists());
}
