//! Every Docker client, unmodified, through a real relay and agent to a
//! real dockerd: the docker CLI, docker-py, Docker's Go SDK, dockerode
//! and testcontainers-node each run the same steps (ping, version, list,
//! create, start, exec, wait, logs, rm; `clients/`) with `DOCKER_HOST`
//! naming the node three ways: by path (`tcp://RELAY/nodes/NODE`), by
//! host name under the relay's `--node-domain` (`tcp://NODE.DOMAIN:PORT`)
//! and through `tunnelgate-relay nodes connect` (a local socket). By path,
//! dockerode and testcontainers fail, as they do against any server with
//! a path in DOCKER_HOST (they keep only host and port): that is what the
//! other two ways are for, and the test says so if it ever changes.
//!
//! The test host names resolve to loopback through lines this test adds
//! to /etc/hosts and removes when it ends.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]
// Tests poll processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{docker_endpoint, relay_bin, AgentCmd, Docker, Proc, Relay};

const DOMAIN: &str = "nodes.tunnelgate.test";
const NODE: &str = "cm-1";
/// Where scripts/install-test-deps puts the npm packages and docker-py.
const TOOLS: &str = "/opt/tunnelgate-test-tools";

/// Lines of /etc/hosts that resolve `names` to loopback while it lives.
struct HostsLines {
    marker: String,
}

/// One edit of /etc/hosts at a time among this binary's tests.
static HOSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl HostsLines {
    fn add(names: &[String]) -> Self {
        let _one = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
        let marker = format!("# tunnelgate-test {} {}", std::process::id(), names[0]);
        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap();
        if !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        hosts.push_str(&format!("127.0.0.1 {} {marker}\n", names.join(" ")));
        std::fs::write("/etc/hosts", hosts).unwrap_or_else(|e| {
            panic!("cannot add the test's host names to /etc/hosts ({e}); run the suite as root, as scripts/test does")
        });
        Self { marker }
    }
}

impl Drop for HostsLines {
    fn drop(&mut self) {
        let _one = HOSTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
            let kept: String = hosts
                .lines()
                .filter(|l| !l.ends_with(&self.marker))
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept);
        }
    }
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Docker's Go SDK client, built from `clients/go_client.go` in GOPATH
/// mode against Debian's packaged SDK.
fn go_client() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tunnelgate-go-client");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(scripts().join("go_client.go"))
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .output()
        .unwrap_or_else(|e| panic!("cannot run go ({e}); scripts/install-test-deps installs golang-go and golang-github-docker-docker-dev"));
    assert!(
        built.status.success(),
        "building the Go client failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// How to run one client with a container name: program and arguments.
fn client_command(client: &str, go: &Path, name: &str) -> Command {
    let python = Path::new(TOOLS).join("bin/python");
    let mut cmd = match client {
        "go-sdk" => Command::new(go),
        "docker-py" => {
            let mut c = Command::new(if python.exists() {
                python
            } else {
                "python3".into()
            });
            c.arg(scripts().join("docker_py.py"));
            c
        }
        "dockerode" | "testcontainers" => {
            let mut c = Command::new("node");
            c.arg(scripts().join(format!("{client}.js")));
            c.env("NODE_PATH", Path::new(TOOLS).join("node/node_modules"));
            c.env("TESTCONTAINERS_RYUK_DISABLED", "true");
            c.env("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1");
            c
        }
        other => panic!("no client {other}"),
    };
    cmd.arg(name);
    cmd
}

/// The docker CLI through the same steps.
fn cli_steps(host: &str, name: &str) -> Result<String, String> {
    let docker = Docker::new(host.to_owned());
    let cmd = format!("echo hello-{name}; while [ ! -f /done ]; do sleep 0.1; done");
    let exec = format!("echo exec-{name}; touch /done");
    let steps: Vec<(&str, Vec<&str>, Option<String>)> = vec![
        (
            "version",
            vec!["version", "--format", "{{.Server.Version}}"],
            None,
        ),
        ("list", vec!["ps", "-a"], None),
        (
            "create",
            vec![
                "create",
                "--name",
                name,
                "--network",
                "none",
                "busybox",
                "sh",
                "-c",
                &cmd,
            ],
            None,
        ),
        ("start", vec!["start", name], None),
        (
            "exec",
            vec!["exec", name, "sh", "-c", &exec],
            Some(format!("exec-{name}")),
        ),
        ("wait", vec!["wait", name], Some("0".into())),
        ("logs", vec!["logs", name], Some(format!("hello-{name}"))),
        ("rm", vec!["rm", "-f", name], None),
    ];
    let mut said = String::new();
    for (step, args, want) in steps {
        let out = docker
            .output_with_stdin(&args, b"")
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let fine = out.status.success() && want.as_ref().is_none_or(|w| text.contains(w.as_str()));
        if !fine {
            return Err(format!(
                "{said}{step}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        said.push_str(&format!("ok: {step}\n"));
    }
    Ok(said)
}

/// Runs `client` against `host`: what it printed, `Err` if it failed.
fn run(client: &str, host: &str, go: &Path, name: &str) -> Result<String, String> {
    if client == "docker-cli" {
        return cli_steps(host, name);
    }
    let out = client_command(client, go, name)
        .env("DOCKER_HOST", host)
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_TLS_VERIFY")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {client} ({e}); scripts/install-test-deps installs it")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() && said.contains("ok: rm") {
        true => Ok(said),
        false => Err(said),
    }
}

/// `nodes connect NODE` on a socket in `dir`: the process and the
/// DOCKER_HOST it printed.
fn forwarder(relay: &Relay, dir: &Path) -> (Proc, String) {
    let mut child = Command::new(relay_bin())
        .args(["nodes", "connect", NODE, "--url"])
        .arg(format!("http://{}", relay.api))
        .arg("--listen")
        .arg(format!("unix://{}", dir.join("cm-1.sock").display()))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("forwarder.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let host = line
        .trim()
        .strip_prefix("export DOCKER_HOST=")
        .unwrap_or_else(|| {
            panic!(
                "the forwarder printed {line:?}: {}",
                std::fs::read_to_string(dir.join("forwarder.log")).unwrap_or_default()
            )
        })
        .to_owned();
    (Proc::new(child, "forwarder"), host)
}

#[test]
fn every_client_reaches_a_node_by_path_by_host_name_and_through_the_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(&dir.path().join("relay"), &["--node-domain", DOMAIN]).unwrap();
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
    let _hosts = HostsLines::add(&[
        format!("{NODE}.{DOMAIN}"),
        format!("fleet.{DOMAIN}"),
        format!("nosuch.{DOMAIN}"),
    ]);
    let (_forwarder, forwarded) = forwarder(&relay, dir.path());
    let go = go_client();
    let port = relay.api.port();
    let ways = [
        ("by path", format!("tcp://127.0.0.1:{port}/nodes/{NODE}")),
        ("by host name", format!("tcp://{NODE}.{DOMAIN}:{port}")),
        ("through the forwarder", forwarded.clone()),
    ];
    let clients = [
        "docker-cli",
        "docker-py",
        "go-sdk",
        "dockerode",
        "testcontainers",
    ];
    // What keeps only host and port of DOCKER_HOST cannot go by path.
    let path_blind = ["dockerode", "testcontainers"];
    let header: Vec<&str> = ways.iter().map(|w| w.0).collect();
    let mut table = vec![format!("| client | {} |", header.join(" | "))];
    let mut wrong = Vec::new();
    for client in clients {
        let mut row = format!("| {client} |");
        for (i, (way, host)) in ways.iter().enumerate() {
            let name = format!("cm-{client}-{i}");
            let _ = Docker::direct().output_with_stdin(&["rm", "-f", &name], b"");
            let got = run(client, host, &go, &name);
            let expected = !(i == 0 && path_blind.contains(&client));
            row.push_str(match got.is_ok() {
                true => " ✓ |",
                false => " ✗ |",
            });
            if got.is_ok() != expected {
                wrong.push(format!("{client} {way} ({host}): {got:?}"));
            }
            let _ = Docker::direct().output_with_stdin(&["rm", "-f", &name], b"");
        }
        table.push(row);
    }
    println!("{}", table.join("\n"));
    assert!(
        wrong.is_empty(),
        "{}\n{}",
        table.join("\n"),
        wrong.join("\n\n")
    );

    // The fleet by host name: one Docker host over the node.
    let fleet = Docker::new(format!("tcp://fleet.{DOMAIN}:{port}"));
    let info = fleet
        .ok(&["info", "--format", "{{.Name}} {{.Containers}}"])
        .unwrap();
    assert!(info.starts_with("tunnelgate"), "{info}");
    // An unknown node by host name: the same error as by path.
    let by_name = Docker::new(format!("tcp://nosuch.{DOMAIN}:{port}"))
        .output_with_stdin(&["ps"], b"")
        .unwrap();
    let by_path = Docker::new(format!("tcp://127.0.0.1:{port}/nodes/nosuch"))
        .output_with_stdin(&["ps"], b"")
        .unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !by_name.status.success() && text(&by_name).contains("no such node"),
        "{}",
        text(&by_name)
    );
    assert_eq!(
        text(&by_name).replace(&format!("nosuch.{DOMAIN}:{port}"), "X"),
        text(&by_path).replace(&format!("127.0.0.1:{port}"), "X"),
    );
}

/// `curl` over TLS to the relay with the certificates in `certs`,
/// resolving `name` to loopback itself and sending `host` as the Host:
/// the status it got.
fn curl_status(certs: &Path, name: &str, port: u16, host: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("cert.pem"))
        .arg("--key")
        .arg(certs.join("key.pem"))
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("https://{name}:{port}/_ping"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn over_tls_a_host_name_is_checked_against_the_certificate_the_server_name_and_the_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with(
        &dir.path().join("relay"),
        &[
            "--api-tls",
            "--api-auth",
            "required",
            "--node-domain",
            DOMAIN,
        ],
    )
    .unwrap();
    let token = relay
        .cli_last_line(&["token", "create", "--tenant", "acme"])
        .unwrap();
    let _agent = AgentCmd::new(
        &relay,
        "tls-1",
        &docker_endpoint(),
        &dir.path().join("agent"),
        Some(&token),
    )
    .spawn()
    .unwrap();
    let (acme, globex) = (dir.path().join("acme"), dir.path().join("globex"));
    relay.client_cert("acme", "ci", &acme).unwrap();
    relay.client_cert("globex", "ci", &globex).unwrap();
    let _hosts = HostsLines::add(&[format!("tls-1.{DOMAIN}"), format!("tls-gone.{DOMAIN}")]);
    let port = relay.api.port();
    let docker = |certs: &Path, node: &str, args: &[&str]| {
        let mut c = Docker::new(format!("tcp://{node}.{DOMAIN}:{port}")).cmd(args.to_vec());
        c.env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", certs);
        c.output().unwrap()
    };
    // The node's host name is in the relay's certificate (`*.DOMAIN`):
    // the docker CLI verifies it and reaches the node.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = docker(
            &acme,
            "tls-1",
            &["version", "--format", "{{.Server.Version}}"],
        );
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never answered by host name over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(docker(&acme, "tls-1", &["ps"]).status.success());
    // Another tenant's certificate finds the node missing, word for word.
    let stderr = |o: std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let theirs = stderr(docker(&globex, "tls-1", &["ps"]));
    let gone = stderr(docker(&globex, "tls-gone", &["ps"]));
    assert!(theirs.contains("no such node"), "{theirs}");
    assert_eq!(theirs.replace("tls-1", "X"), gone.replace("tls-gone", "X"));
    // The TLS server name and the Host must agree.
    let name = format!("tls-1.{DOMAIN}");
    assert_eq!(
        curl_status(&acme, &name, port, &format!("{name}:{port}")),
        "200"
    );
    assert_eq!(
        curl_status(&acme, &name, port, &format!("tls-gone.{DOMAIN}")),
        "421"
    );
    assert_eq!(curl_status(&acme, &name, port, "relay.example.com"), "421");
}
