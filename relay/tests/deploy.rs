//! The deploy files as the tools that run them read them: `shellcheck` on
//! every shell script, `systemd-analyze verify` on the units (pointed at
//! the binaries this build made), `promtool` on the Prometheus config
//! and rules. `scripts/test` installs the tools.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// It polls a container from a plain thread, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn passes(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}); scripts/test installs it"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_shell_script_is_shellcheck_clean() {
    let root = repo();
    let mut scripts = vec![root.join("deploy/install.sh")];
    for dir in ["scripts", "benches", "benches/peers", ".ci"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.starts_with("#!/bin/sh")
                || text.starts_with("#!/usr/bin/env bash")
                || text.starts_with("#!/bin/bash")
            {
                scripts.push(path);
            }
        }
    }
    assert!(scripts.len() > 5, "found only {scripts:?}");
    // Run from each script's folder, so `source` directives resolve.
    for script in &scripts {
        passes(
            Command::new("shellcheck")
                .arg("-x")
                .arg(script.file_name().unwrap())
                .current_dir(script.parent().unwrap()),
        );
    }
}

#[test]
fn the_systemd_units_verify() {
    let bins = Path::new(env!("CARGO_BIN_EXE_tunnelgate-relay"))
        .parent()
        .unwrap()
        .display()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    for unit in ["tunnelgate-agent.service", "tunnelgate-relay.service"] {
        let text = std::fs::read_to_string(repo().join("deploy/systemd").join(unit)).unwrap();
        assert!(text.contains("NoNewPrivileges=yes") && text.contains("ProtectSystem=strict"));
        let local = text.replace("/usr/local/bin", &bins);
        std::fs::write(dir.path().join(unit), local).unwrap();
    }
    support::agent_bin();
    passes(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path().join("tunnelgate-agent.service"))
            .arg(dir.path().join("tunnelgate-relay.service")),
    );
    // The relay's stop timeout outlasts its default shutdown grace (10 s).
    let relay =
        std::fs::read_to_string(repo().join("deploy/systemd/tunnelgate-relay.service")).unwrap();
    let stop: u64 = relay
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
        .expect("the relay unit sets TimeoutStopSec in seconds");
    assert!(
        stop > 10,
        "TimeoutStopSec={stop}s does not outlast the 10 s shutdown grace"
    );
}

#[test]
fn the_prometheus_files_check() {
    let dir = repo().join("deploy/prometheus");
    passes(
        Command::new("promtool")
            .args(["check", "config", "prometheus.yml"])
            .current_dir(&dir),
    );
    passes(
        Command::new("promtool")
            .args(["check", "rules", "tunnelgate-rules.yml"])
            .current_dir(&dir),
    );
    // Every metric the rules use is one the relay exports.
    let rules = std::fs::read_to_string(dir.join("tunnelgate-rules.yml")).unwrap();
    let metrics_rs = std::fs::read_to_string(repo().join("relay/src/metrics.rs")).unwrap();
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("tunnelgate_") {
            assert!(
                metrics_rs.contains(&format!("\"{word}\"")),
                "rule uses unknown metric {word}"
            );
        }
    }
}

/// The libraries `binary` loads, as `ldd` lists them.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

#[test]
fn the_image_builds_from_a_local_base_and_runs_without_a_network() {
    let docker = support::Docker::new(support::docker_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let (root, ctx) = (dir.path().join("base"), dir.path().join("ctx"));
    let bins = Path::new(env!("CARGO_BIN_EXE_tunnelgate-relay"))
        .parent()
        .unwrap()
        .to_owned();
    support::agent_bin();
    std::fs::create_dir_all(&ctx).unwrap();
    for bin in ["tunnelgate-relay", "tunnelgate-agent"] {
        passes(
            Command::new("strip")
                .arg("-o")
                .arg(ctx.join(bin))
                .arg(bins.join(bin)),
        );
    }
    // A base with glibc and a non-root user only, as distroless has:
    // made here because no registry is reachable.
    for lib in libraries(&ctx.join("tunnelgate-relay")) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &to).unwrap();
    }
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n",
    )
    .unwrap();
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let base = "tunnelgate-test-base:latest";
    docker
        .ok_bytes(&["import", "-", base], &tar.stdout)
        .unwrap();
    for f in ["Dockerfile", "state/README"] {
        let to = ctx.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join("deploy").join(f), to).unwrap();
    }
    let image = "tunnelgate-test-image:latest";
    docker
        .ok(&[
            "build",
            "-q",
            "--build-arg",
            &format!("BASE={base}"),
            "-t",
            image,
            ctx.to_str().unwrap(),
        ])
        .unwrap();
    let version = docker
        .ok(&["run", "--rm", "--network", "none", image, "--version"])
        .unwrap();
    assert!(version.starts_with("tunnelgate-relay "), "{version}");
    let agent = docker
        .ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/usr/local/bin/tunnelgate-agent",
            image,
            "--version",
        ])
        .unwrap();
    assert!(agent.starts_with("tunnelgate-agent "), "{agent}");
    let user = docker
        .ok(&["image", "inspect", "--format", "{{.Config.User}}", image])
        .unwrap();
    assert_eq!(user.trim(), "65532:65532", "the image must not run as root");
    let health = docker
        .ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Healthcheck.Test}}",
            image,
        ])
        .unwrap();
    assert!(health.contains("healthcheck"), "{health}");
    // Served as the image says (non-root, its own state dir, no network
    // but loopback), its health check passes once it listens, and it
    // stops on SIGTERM.
    let name = format!("tunnelgate-test-relay-{}", std::process::id());
    docker
        .ok(&["run", "-d", "--name", &name, "--network", "none", image])
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while docker
        .ok(&[
            "exec",
            &name,
            "/usr/local/bin/tunnelgate-relay",
            "healthcheck",
        ])
        .is_err()
    {
        if std::time::Instant::now() > deadline {
            let logs = docker.output_with_stdin(&["logs", &name], b"").unwrap();
            let _ = docker.ok(&["rm", "-f", &name]);
            panic!(
                "the relay in the image never passed its health check; its log:\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    docker.ok(&["stop", "-t", "30", &name]).unwrap();
    let code = docker
        .ok(&["inspect", "--format", "{{.State.ExitCode}}", &name])
        .unwrap();
    let _ = docker.ok(&["rm", "-f", &name]);
    assert_eq!(
        code.trim(),
        "0",
        "the relay did not stop cleanly on SIGTERM"
    );
    let _ = docker.ok(&["rmi", image, base]);
}
