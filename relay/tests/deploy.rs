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
    for dir in ["scripts", "benches", "benches/peers", ".ci", "deploy/deb"] {
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

/// A rootfs of the libraries `binary` loads and `files` (from, to), with
/// a non-root user, as distroless has: made here because no registry is
/// reachable. Returns it as a tar.
fn rootfs(binary: &Path, files: &[(&Path, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for lib in libraries(binary) {
        let to = root.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &to).unwrap();
    }
    for (from, to) in files {
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
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
        .arg(root)
        .args(["-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    tar.stdout
}

const IMAGE: &str = "tunnelgate-test-image:latest";
const ETCD_IMAGE: &str = "tunnelgate-test-etcd:latest";

/// Builds, once for this test binary, the image from `deploy/Dockerfile`
/// with this build's binaries on a locally made glibc-only base, and an
/// etcd image from this machine's etcd. Returns the docker CLI.
fn images() -> support::Docker {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let docker = support::Docker::new(support::docker_endpoint());
    BUILT.call_once(|| {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
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
        let base = "tunnelgate-test-base:latest";
        let tar = rootfs(&ctx.join("tunnelgate-relay"), &[]);
        docker.ok_bytes(&["import", "-", base], &tar).unwrap();
        for f in ["Dockerfile", "state/README"] {
            let to = ctx.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo().join("deploy").join(f), to).unwrap();
        }
        docker
            .ok(&[
                "build",
                "-q",
                "--build-arg",
                &format!("BASE={base}"),
                "-t",
                IMAGE,
                ctx.to_str().unwrap(),
            ])
            .unwrap();
        let etcd = support::which("etcd");
        let tar = rootfs(&etcd, &[(&etcd, "usr/local/bin/etcd")]);
        docker
            .ok_bytes(
                &[
                    "import",
                    "--change",
                    "ENV PATH=/usr/local/bin",
                    "-",
                    ETCD_IMAGE,
                ],
                &tar,
            )
            .unwrap();
    });
    docker
}

#[test]
fn the_image_builds_from_a_local_base_and_runs_without_a_network() {
    let docker = images();
    let image = IMAGE;
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
    // but loopback, a read-only root as the Kubernetes manifest asks), its
    // health check passes once it listens, and it stops on SIGTERM.
    let name = format!("tunnelgate-test-relay-{}", std::process::id());
    docker
        .ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "--read-only",
            image,
        ])
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
}

/// A port free on loopback now (the compose file publishes on the host).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A compose project from `deploy/compose/`, taken down with its volumes
/// when dropped.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-f")
            .arg(repo().join("deploy/compose/docker-compose.yml"))
            .args(["-p", &self.project, "--no-ansi"])
            .args(args)
            .env("DOCKER_HOST", support::docker_endpoint())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cmd(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "docker-compose {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The logs of every service, for a failure report.
    fn logs(&self) -> String {
        self.cmd(&["logs", "--tail", "40"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.cmd(&["down", "-v", "-t", "5"]).output();
    }
}

#[test]
fn the_compose_file_validates() {
    let out = Command::new("docker-compose")
        .arg("-f")
        .arg(repo().join("deploy/compose/docker-compose.yml"))
        .args(["config", "-q"])
        .output()
        .expect("docker-compose is missing; scripts/test installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose cluster as a user brings it up: etcd, the CA made once,
/// three relays reading it, an agent enrolled with a token made in a relay
/// container; `docker ps` through each relay's published port reaches the
/// node (one relay holds no session of it, so that call goes through a
/// peer), and with one relay stopped the others still serve.
#[test]
fn the_compose_cluster_serves_the_node_through_every_relay() {
    let docker = images();
    let socket = support::docker_endpoint()
        .strip_prefix("unix://")
        .expect("a unix socket")
        .to_owned();
    let ports = [free_port(), free_port(), free_port()];
    let compose = Compose {
        project: format!("tgcompose{}", std::process::id()),
        env: vec![
            ("TUNNELGATE_IMAGE".into(), IMAGE.into()),
            ("ETCD_IMAGE".into(), ETCD_IMAGE.into()),
            ("TUNNELGATE_PORT_A".into(), ports[0].to_string()),
            ("TUNNELGATE_PORT_B".into(), ports[1].to_string()),
            ("TUNNELGATE_PORT_C".into(), ports[2].to_string()),
            ("DOCKER_SOCKET".into(), socket),
            ("TUNNELGATE_NODE_ID".into(), "compose-host".into()),
        ],
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("{what}: {e}\n--- compose logs:\n{}", compose.logs())
    };
    // Prometheus is left out: no registry to pull it from; promtool checks
    // its files.
    let up = [
        "up",
        "-d",
        "--no-build",
        "etcd",
        "ca",
        "relay-a",
        "relay-b",
        "relay-c",
    ];
    compose.run(&up).unwrap_or_else(|e| fail("up", &e));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let token = loop {
        match compose.run(&[
            "exec",
            "-T",
            "relay-a",
            "tunnelgate-relay",
            "token",
            "create",
        ]) {
            Ok(out) => break out.lines().last().unwrap_or_default().to_owned(),
            Err(e) if std::time::Instant::now() > deadline => fail("token create", &e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    };
    let mut with_token = compose.cmd(&["--profile", "agent", "up", "-d", "--no-build", "agent"]);
    let out = with_token.env("TUNNELGATE_TOKEN", &token).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    compose
        .run(&[
            "exec",
            "-T",
            "relay-b",
            "tunnelgate-relay",
            "client-cert",
            "create",
            "--tenant",
            "default",
            "--out",
            "/var/lib/tunnelgate-relay/client",
        ])
        .unwrap_or_else(|e| fail("client-cert create", &e));
    let certs = tempfile::tempdir().unwrap();
    let relay_b = compose.run(&["ps", "-q", "relay-b"]).unwrap();
    docker
        .ok(&[
            "cp",
            &format!("{}:/var/lib/tunnelgate-relay/client/.", relay_b.trim()),
            certs.path().to_str().unwrap(),
        ])
        .unwrap();
    let agent_container = format!("{}_agent_1", compose.project);
    let ps_through = |port: u16| {
        Command::new("docker")
            .args(["ps", "--format", "{{.Names}}"])
            .env(
                "DOCKER_HOST",
                format!("tcp://127.0.0.1:{port}/nodes/compose-host"),
            )
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", certs.path())
            .output()
            .unwrap()
    };
    let wait_ps = |port: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let out = ps_through(port);
            let text = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && text.lines().any(|l| l == agent_container) {
                return;
            }
            if std::time::Instant::now() > deadline {
                fail(
                    &format!("docker ps through 127.0.0.1:{port}"),
                    &format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    for port in ports {
        wait_ps(port);
    }
    compose
        .run(&["stop", "-t", "30", "relay-a"])
        .unwrap_or_else(|e| fail("stop relay-a", &e));
    for port in &ports[1..] {
        wait_ps(*port);
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let dir = repo().join("deploy/k8s");
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 3, "{manifests:?}");
    // The oldest release with the preStop sleep action on by default, and
    // the newest the validator knows.
    for version in ["1.30.0", "1.37.0"] {
        passes(
            Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "-k", version])
                .args(&manifests),
        );
    }
}

/// The `TUNNELGATE_*` settings a deploy file sets: keys of a YAML map
/// (`TUNNELGATE_X: ...`) and `- name: TUNNELGATE_X` entries; not the
/// compose file's own `${...}` variables.
fn settings_in(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_start_matches("- name: "))
        .filter(|l| l.starts_with("TUNNELGATE_"))
        .map(|l| l.split(':').next().unwrap().trim().to_owned())
        .collect()
}

/// The `[env: ...]` names a binary's `--help` lists.
fn env_names(help: &mut Command) -> Vec<String> {
    let out = help.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split("[env: ")
        .skip(1)
        .map(|s| s.split(['=', ']']).next().unwrap().to_owned())
        .collect()
}

/// A line `key: value` of a deploy file, the value unquoted.
fn value_of(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()));
    line[key.len() + 1..].trim().trim_matches('"').to_owned()
}

fn seconds(text: &str) -> u64 {
    humantime::parse_duration(text)
        .map(|d| d.as_secs())
        .or_else(|_| text.parse())
        .unwrap_or_else(|_| panic!("not a duration: {text}"))
}

/// A misspelt setting in a manifest is silently ignored by the relay, so
/// every one is checked against what the binaries read; and the time a
/// pod or container gets to stop must cover the relay's drain.
#[test]
fn the_deploy_files_set_only_real_settings_and_give_the_drain_its_time() {
    let relay =
        env_names(Command::new(env!("CARGO_BIN_EXE_tunnelgate-relay")).args(["serve", "--help"]));
    let agent = env_names(Command::new(support::agent_bin()).arg("--help"));
    assert!(relay.iter().any(|n| n == "TUNNELGATE_CA_DIR"), "{relay:?}");
    assert!(agent.iter().any(|n| n == "TUNNELGATE_TOKEN"), "{agent:?}");
    let deploy = repo().join("deploy");
    let files = [
        deploy.join("compose/docker-compose.yml"),
        deploy.join("k8s/config.yaml"),
        deploy.join("k8s/relay.yaml"),
    ];
    for file in &files {
        let settings = settings_in(file);
        assert!(!settings.is_empty(), "{}", file.display());
        for name in settings {
            assert!(
                relay.contains(&name) || agent.contains(&name),
                "{} sets {name}, which neither binary reads",
                file.display()
            );
        }
    }
    let k8s_grace = seconds(&value_of(&files[1], "TUNNELGATE_SHUTDOWN_GRACE"));
    let pause = seconds(&value_of(&files[2], "seconds"));
    let termination = seconds(&value_of(&files[2], "terminationGracePeriodSeconds"));
    assert!(
        termination > pause + k8s_grace,
        "terminationGracePeriodSeconds {termination} must exceed the preStop pause {pause} and the shutdown grace {k8s_grace}"
    );
    let compose_grace = seconds(&value_of(&files[0], "TUNNELGATE_SHUTDOWN_GRACE"));
    let stop = seconds(&value_of(&files[0], "stop_grace_period"));
    assert!(
        stop > compose_grace,
        "stop_grace_period {stop} must exceed the shutdown grace {compose_grace}"
    );
}

/// `dpkg-query -W -f FORMAT PACKAGE`, or `None` when it is not installed.
fn dpkg_query(package: &str, format: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", format, package])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn installed(package: &str) -> bool {
    dpkg_query(package, "${Status}").is_some_and(|s| s.ends_with(" installed"))
}

/// Runs a command as it prints to a user; returns what it printed.
fn prints(cmd: &mut Command) -> String {
    let out = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The packages as an operator uses them, on this machine (which has no
/// running systemd, so the maintainer scripts take their no-systemd way):
/// install, edit the conffile, upgrade to a newer package (the edit
/// kept), `apt-get remove` (binary gone, config and identity kept),
/// `apt-get purge` (config and identity gone); the relay's packaged
/// config starts the packaged binary as it is.
#[test]
fn the_debian_packages_install_upgrade_and_remove() {
    for package in ["tunnelgate-agent", "tunnelgate-relay"] {
        assert!(
            !installed(package),
            "{package} is installed on this machine; this test installs and removes it, so run it \
             where it is not (a CI machine), or remove it first"
        );
    }
    // Whatever happens below, the machine is left without them.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg")
                .args(["--purge", "tunnelgate-agent", "tunnelgate-relay"])
                .output();
        }
    }
    let _purge = Purge;
    let bins = Path::new(env!("CARGO_BIN_EXE_tunnelgate-relay"))
        .parent()
        .unwrap()
        .to_owned();
    support::agent_bin();
    let out = tempfile::tempdir().unwrap();
    let build = |version: &str| -> Vec<PathBuf> {
        prints(
            Command::new(repo().join("deploy/deb/build.sh"))
                .arg("--bin-dir")
                .arg(&bins)
                .arg("--out")
                .arg(out.path().join(version))
                .args(["--version", version, "--compress", "gzip"]),
        )
        .lines()
        .map(PathBuf::from)
        .collect()
    };
    let old = build("0.1.0~test1");
    let new = build("0.1.0~test2");
    assert_eq!(old.len(), 2, "{old:?}");
    let (agent_old, relay_old, agent_new) = (&old[0], &old[1], &new[0]);
    assert!(agent_old
        .to_str()
        .unwrap()
        .contains("tunnelgate-agent_0.1.0~test1_"));

    let said = prints(Command::new("dpkg").arg("-i").arg(agent_old));
    assert!(said.contains("no systemd here"), "{said}");
    let version = prints(Command::new("/usr/bin/tunnelgate-agent").arg("--version"));
    assert!(version.starts_with("tunnelgate-agent "), "{version}");
    let conf = Path::new("/etc/tunnelgate/agent.toml");
    let conffiles = dpkg_query("tunnelgate-agent", "${Conffiles}").unwrap_or_default();
    assert!(
        conffiles.contains("/etc/tunnelgate/agent.toml"),
        "{conffiles}"
    );
    assert!(Path::new("/lib/systemd/system/tunnelgate-agent.service").exists());
    let unit = std::fs::read_to_string("/lib/systemd/system/tunnelgate-agent.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/tunnelgate-agent "),
        "{unit}"
    );

    // The operator's edit survives an upgrade; so does the node's identity.
    let edited = format!(
        "{}relay = \"relay.test:7443\"\n",
        std::fs::read_to_string(conf).unwrap()
    );
    std::fs::write(conf, &edited).unwrap();
    std::fs::create_dir_all("/var/lib/tunnelgate-agent").unwrap();
    std::fs::write("/var/lib/tunnelgate-agent/node.pem", "identity").unwrap();
    prints(Command::new("dpkg").arg("-i").arg(agent_new));
    assert_eq!(
        dpkg_query("tunnelgate-agent", "${Version}").as_deref(),
        Some("0.1.0~test2")
    );
    assert_eq!(std::fs::read_to_string(conf).unwrap(), edited);

    prints(Command::new("apt-get").args(["remove", "-y", "tunnelgate-agent"]));
    assert!(!Path::new("/usr/bin/tunnelgate-agent").exists());
    assert!(conf.exists(), "remove keeps the config");
    assert!(Path::new("/var/lib/tunnelgate-agent/node.pem").exists());
    let said = prints(Command::new("apt-get").args(["purge", "-y", "tunnelgate-agent"]));
    assert!(said.contains("node revoke"), "{said}");
    assert!(!conf.exists(), "purge removes the config");
    assert!(!Path::new("/var/lib/tunnelgate-agent").exists());
    assert!(dpkg_query("tunnelgate-agent", "${Status}").is_none_or(|s| !s.ends_with(" installed")));

    // The relay's package: its packaged config starts the packaged binary.
    let said = prints(Command::new("dpkg").arg("-i").arg(relay_old));
    assert!(said.contains("no systemd here"), "{said}");
    let state = tempfile::tempdir().unwrap();
    let mut relay = Command::new("/usr/bin/tunnelgate-relay")
        .args([
            "serve",
            "--config",
            "/etc/tunnelgate/relay.toml",
            "--state-dir",
        ])
        .arg(state.path())
        .args([
            "--api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(relay.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = relay.kill();
    let _ = relay.wait();
    assert!(
        line.parse::<tunnelgate_relay::ListeningLine>().is_ok(),
        "the packaged relay did not start with its packaged config: {line:?}"
    );
    prints(Command::new("apt-get").args(["purge", "-y", "tunnelgate-relay"]));
    assert!(!Path::new("/usr/bin/tunnelgate-relay").exists());
}

/// The Grafana dashboard: every panel's query is valid PromQL (promtool
/// checks it as a recording rule, Grafana's variables filled in), uses
/// only metrics the relay exports, and the panels do not overlap.
#[test]
fn the_grafana_dashboard_queries_are_valid_promql_over_real_metrics() {
    let path = repo().join("deploy/grafana/tunnelgate-relays.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    let metrics_rs = std::fs::read_to_string(repo().join("relay/src/metrics.rs")).unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut cells = std::collections::HashSet::new();
    for (i, panel) in panels.iter().enumerate() {
        let title = panel["title"].as_str().unwrap();
        let pos = &panel["gridPos"];
        let (x, y, w, h) = ["x", "y", "w", "h"]
            .map(|k| pos[k].as_u64().unwrap())
            .into();
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for (j, target) in targets.iter().enumerate() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("tunnelgate_") {
                    let base = word.strip_suffix("_bucket").unwrap_or(word);
                    assert!(
                        metrics_rs.contains(&format!("\"{base}\"")),
                        "{title} uses {word}, which the relay does not export"
                    );
                }
            }
            let promql = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            rules.push_str(&format!(
                "      - record: dashboard:panel{i}:query{j}\n        expr: {}\n",
                serde_json::Value::String(promql)
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard-rules.yml"), rules).unwrap();
    passes(
        Command::new("promtool")
            .args(["check", "rules", "dashboard-rules.yml"])
            .current_dir(dir.path()),
    );
}
