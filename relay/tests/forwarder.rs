//! `tunnelgate-relay nodes connect` against a real relay, agent and
//! dockerd, driven by the real docker CLI on its socket: `run -it` with a
//! TTY, `logs -f`, `cp` both ways and `exec`; an owner-only socket; the
//! relay restarted under it, and the next call working with no restart
//! of the forwarder; and a node that is not there refused at start.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use support::{docker_endpoint, relay_bin, AgentCmd, Docker, Proc, Relay};

const NODE: &str = "fwd-1";

/// One `GET /_ping` on a kept-alive connection: the answer's head and body.
fn ping_on(conn: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The daemon's answer to a ping is `OK`, two bytes after the head.
    while !got.ends_with(b"\r\n\r\nOK") && !got.ends_with(b"}") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn the_forwarder_carries_every_kind_of_call_and_outlives_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let relay = Relay::start(&state).unwrap();
    let token = relay.token().unwrap();
    let _agent = AgentCmd::new(
        &relay,
        NODE,
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    relay.wait_for_node(NODE).unwrap();
    let socket = dir.path().join("run/fwd-1.sock");
    let log = dir.path().join("forwarder.log");
    let mut child = Command::new(relay_bin())
        .args(["nodes", "connect", NODE, "--url"])
        .arg(format!("http://{}", relay.api))
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _forwarder = Proc::new(child, "forwarder");
    assert_eq!(
        line.trim(),
        format!("export DOCKER_HOST=unix://{}", socket.display())
    );
    let host = line
        .trim()
        .trim_start_matches("export DOCKER_HOST=")
        .to_owned();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket is {mode:o}");
    let docker = Docker::new(host.clone());

    // `run -it`: a TTY, input in, output out.
    let mut tty = Command::new("script")
        .args([
            "-qec",
            "docker run -it --rm --network none busybox sh -c 'read x; echo got-$x; tty'",
            "/dev/null",
        ])
        .env("DOCKER_HOST", &host)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tty.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let out = tty.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("got-abc") && said.contains("/dev/pts/"),
        "{said:?}"
    );

    // A running container: exec, cp both ways, logs -f.
    let c = "fwd-ticker";
    let _ = Docker::direct().output_with_stdin(&["rm", "-f", c], b"");
    docker
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
    assert_eq!(
        docker.ok(&["exec", c, "echo", "exec-ok"]).unwrap().trim(),
        "exec-ok"
    );
    let echoed = docker
        .output_with_stdin(&["exec", "-i", c, "cat"], b"piped-in")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), "piped-in");
    let (sent, back) = (dir.path().join("in.txt"), dir.path().join("out.txt"));
    std::fs::write(&sent, "copied both ways").unwrap();
    docker
        .ok(&["cp", sent.to_str().unwrap(), &format!("{c}:/in.txt")])
        .unwrap();
    docker
        .ok(&["cp", &format!("{c}:/in.txt"), back.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied both ways");
    let mut follow = docker
        .cmd(["logs", "-f", "--since", "1s", c])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        assert_eq!(lines.next().unwrap().unwrap(), "tick");
    }
    follow.kill().unwrap();
    let _ = follow.wait();

    // The relay restarts under the forwarder; the next call works.
    let (api, agent) = (relay.api.to_string(), relay.agent.to_string());
    // A client connection kept alive across the restart: its relay
    // connection dies under it.
    let mut kept = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    assert!(ping_on(&mut kept).starts_with("HTTP/1.1 200"));
    drop(relay);
    let relay = Relay::start_on(&state, &api, &agent).unwrap();
    relay.wait_for_node(NODE).unwrap();
    // The very next request, not a retry (the docker CLI would hide a
    // failed first ping): the forwarder's connections to the old relay
    // are closed, and it dials again.
    let ping = Command::new("curl")
        .args(["-s", "-w", " %{http_code}", "--unix-socket"])
        .arg(&socket)
        .arg("http://docker/_ping")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ping.stdout), "OK 200");
    let again = ping_on(&mut kept);
    assert!(
        again.starts_with("HTTP/1.1 200"),
        "the kept connection after the restart: {again}"
    );
    let after = docker.ok(&["exec", c, "echo", "after-restart"]).unwrap();
    assert_eq!(after.trim(), "after-restart");
    Docker::direct().ok(&["rm", "-f", c]).unwrap();

    // --fleet on a loopback port: the fleet endpoint.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut fleet = Command::new(relay_bin())
        .args(["nodes", "connect", "--fleet", "--url"])
        .arg(format!("http://{}", relay.api))
        .args(["--listen", &format!("tcp://127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(fleet.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _fleet = Proc::new(fleet, "fleet forwarder");
    assert_eq!(
        line.trim(),
        format!("export DOCKER_HOST=tcp://127.0.0.1:{port}")
    );
    let info = Docker::new(format!("tcp://127.0.0.1:{port}"))
        .ok(&["info", "--format", "{{.Name}}"])
        .unwrap();
    assert_eq!(info.trim(), "tunnelgate-fleet");

    // A node that is not there: refused at start, saying so.
    let out = Command::new(relay_bin())
        .args(["nodes", "connect", "fwd-nosuch", "--url"])
        .arg(format!("http://{}", relay.api))
        .arg("--listen")
        .arg(format!(
            "unix://{}",
            dir.path().join("nosuch.sock").display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("404") && err.contains("no such node"),
        "{err}"
    );
}
