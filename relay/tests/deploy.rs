//! The deploy files as the tools that run them read them: `shellcheck` on
//! every shell script, `systemd-analyze verify` on the units (pointed at
//! the binaries this build made), `promtool` on the Prometheus config
//! and rules. `scripts/test` installs the tools.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

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
