//! The agent binary as an operator meets it: help that explains, and
//! configuration mistakes that say what to fix.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tunnelgate-agent"))
}

#[test]
fn help_explains_enrolment_and_every_flag() {
    let out = agent().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "--relay",
        "--token",
        "--node-id",
        "--docker",
        "--state-dir",
        "--transport",
        "TUNNELGATE_RELAY",
        "enrols",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn a_missing_relay_address_is_named_with_the_fix() {
    let out = agent().env_remove("TUNNELGATE_RELAY").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--relay HOST:PORT"), "{stderr}");
}

#[test]
fn no_certificate_and_no_token_says_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args([
            "--relay",
            "127.0.0.1:9",
            "--node-id",
            "n1",
            "--docker",
            "unix:///nonexistent.sock",
            "--state-dir",
        ])
        .arg(dir.path())
        .env_remove("TUNNELGATE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token create") && stderr.contains("--token"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_token_is_refused_before_dialling() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent()
        .args([
            "--relay",
            "127.0.0.1:9",
            "--node-id",
            "n1",
            "--token",
            "not-a-token",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed"), "{stderr}");
    assert!(
        !stderr.contains("not-a-token"),
        "the token text must not be echoed: {stderr}"
    );
}

#[test]
fn docker_tls_explains_itself_and_wants_a_name_before_dialling() {
    let out = agent().args(["docker-tls", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in ["--out", "--name", "--ip", "--port", "--relay", "--token"] {
        assert!(
            help.contains(needle),
            "docker-tls --help lacks {needle}:\n{help}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // Port 9 on loopback answers nothing: the command must refuse before
    // it tries, naming what is missing.
    let out = agent()
        .args(["docker-tls", "--out"])
        .arg(dir.path().join("tls"))
        .args(["--relay", "127.0.0.1:9", "--node-id", "n1", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--name or --ip"), "{stderr}");
    assert!(!dir.path().join("tls").exists(), "nothing may be written");
}

#[test]
fn a_direct_endpoint_must_be_tcp_host_port() {
    let out = agent()
        .args(["--relay", "127.0.0.1:9", "--node-id", "n1"])
        .args(["--direct-endpoint", "unix:///var/run/docker.sock"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("direct_endpoint") && stderr.contains("tcp://"),
        "{stderr}"
    );
}
