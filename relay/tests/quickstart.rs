//! `tunnelgate-relay quickstart`: one command gives a working DOCKER_HOST,
//! and Ctrl-C stops relay and agent cleanly.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{docker_endpoint, relay_bin, Docker, LineReader};

#[test]
fn quickstart_prints_a_working_docker_host_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(relay_bin())
        .arg("quickstart")
        .arg("--state-dir")
        .arg(dir.path())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--node-id", "quick", "--docker", &docker_endpoint()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = LineReader::new(child.stdout.take().unwrap());
    let export = lines.wait_for("export DOCKER_HOST=", Duration::from_secs(60));
    let export = match export {
        Ok(line) => line,
        Err(e) => {
            let _ = child.kill();
            panic!("quickstart printed no DOCKER_HOST: {e}");
        }
    };
    let host = export
        .trim()
        .trim_start_matches("export DOCKER_HOST=")
        .to_owned();
    assert!(
        host.starts_with("tcp://127.0.0.1:") && host.ends_with("/nodes/quick"),
        "{host}"
    );
    let out = Docker::new(&host).ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "echo",
        "quick",
    ]);

    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(out.unwrap(), "quick\n");
    assert!(
        status.success(),
        "Ctrl-C should stop quickstart cleanly, got {status}"
    );
}
