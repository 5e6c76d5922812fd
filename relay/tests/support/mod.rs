//! Helpers for end-to-end tests: real relay and agent processes, the real
//! `docker` CLI, and the real dockerd that `scripts/test` starts.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]
// Helpers poll real processes from plain threads, where sleeping is fine.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The real Docker daemon the tests drive, checked once. Fails with the
/// way to get one; never skips.
pub fn docker_endpoint() -> String {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| {
            let endpoint = std::env::var("TUNNELGATE_TEST_DOCKER")
                .unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
            let version = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .env("DOCKER_HOST", &endpoint)
                .output();
            match version {
                Err(e) => panic!(
                    "the docker CLI is missing ({e}); install it with `apt-get install docker.io`, \
                     or run the suite with scripts/test, which installs and starts what it needs"
                ),
                Ok(out) if !out.status.success() => panic!(
                    "no Docker daemon answers at {endpoint} ({}); run the suite with scripts/test, which \
                     starts a private dockerd, or set TUNNELGATE_TEST_DOCKER=unix:///path/to/docker.sock",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(_) => {}
            }
            let image = Command::new("docker")
                .args(["image", "inspect", "busybox:latest"])
                .env("DOCKER_HOST", &endpoint)
                .output()
                .expect("docker runs");
            assert!(
                image.status.success(),
                "the busybox:latest test image is missing at {endpoint}; scripts/test makes it from busybox-static"
            );
            endpoint
        })
        .clone()
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tunnelgate-relay"))
        .parent()
        .expect("binary has a directory")
        .to_owned()
}

/// Where tool `name` is on the PATH; a test that needs a missing tool
/// fails saying that scripts/test installs it.
pub fn which(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("sh runs");
    assert!(
        out.status.success(),
        "{name} is missing; scripts/test installs it (scripts/install-test-deps)"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Path of the relay binary cargo built for these tests.
pub fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tunnelgate-relay"))
}

/// Path of the agent binary. `cargo test --workspace` builds it (the
/// agent package has integration tests of its own); when only this package
/// is tested it may be missing or stale, and is built here then.
pub fn agent_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = bin_dir();
            let bin = dir.join("tunnelgate-agent");
            if is_fresh(&bin) {
                return bin;
            }
            eprintln!("building tunnelgate-agent for the end-to-end tests");
            let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "tunnelgate-agent",
                "--bin",
                "tunnelgate-agent",
            ]);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            if let Some(target) = dir.parent() {
                cmd.env("CARGO_TARGET_DIR", target);
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building tunnelgate-agent failed");
            bin
        })
        .clone()
}

/// Whether `bin` exists and is newer than every source it is built from.
fn is_fresh(bin: &Path) -> bool {
    fn newest(dir: &Path) -> std::time::SystemTime {
        let mut latest = std::time::UNIX_EPOCH;
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let modified = if path.is_dir() {
                newest(&path)
            } else {
                entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH)
            };
            latest = latest.max(modified);
        }
        latest
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    ["agent-side/src", "proto/src", "proto/session/src"]
        .iter()
        .all(|d| newest(&root.join(d)) <= built)
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    name: &'static str,
}

impl Proc {
    /// A process to kill when the test ends.
    pub fn new(child: Child, name: &'static str) -> Self {
        Self { child, name }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful stop).
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            eprintln!("stopping {}", self.name);
        }
        self.kill();
    }
}

/// The value given to `name` in `args`.
fn flag(args: &[&str], name: &str) -> Option<String> {
    let at = args.iter().position(|a| *a == name)?;
    args.get(at + 1).map(|v| v.to_string())
}

/// A relay process on ephemeral loopback ports with its own state dir.
pub struct Relay {
    pub proc: Proc,
    pub api: SocketAddr,
    pub agent: SocketAddr,
    pub metrics: SocketAddr,
    /// The relay-to-relay port, in a cluster.
    pub peer: Option<SocketAddr>,
    pub state: PathBuf,
    /// The `--registry` it serves with: admin commands use it too.
    pub registry: Option<String>,
    /// The `--ca-dir` it serves with, likewise.
    pub ca_dir: Option<String>,
    _stdout: ChildStdout,
}

impl Relay {
    pub fn start(state: &Path) -> Result<Self> {
        Self::start_on(state, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts on given API and agent addresses (to restart in place). The
    /// relay's log goes to `relay.log` in the state dir's parent, and to
    /// this test's stderr when `TUNNELGATE_TEST_LOG` is set.
    pub fn start_on(state: &Path, api: &str, agent: &str) -> Result<Self> {
        Self::start_args(state, api, agent, &[])
    }

    /// Starts on loopback ephemeral ports with extra `serve` flags.
    pub fn start_with(state: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_args(state, "127.0.0.1:0", "127.0.0.1:0", extra)
    }

    pub fn start_args(state: &Path, api: &str, agent: &str, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(state)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state.with_extension("log"))?;
        let mut child = Command::new(relay_bin())
            .args(["serve", "--state-dir"])
            .arg(state)
            .args([
                "--api-listen",
                api,
                "--agent-listen",
                agent,
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--heartbeat-interval", "1s", "--shutdown-grace", "3s"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("spawning tunnelgate-relay")?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let tunnelgate_relay::ListeningLine {
            api,
            agent,
            metrics,
            peer,
        } = line.parse().map_err(anyhow::Error::msg)?;
        Ok(Self {
            proc: Proc {
                child,
                name: "relay",
            },
            api,
            agent,
            metrics,
            peer,
            state: state.to_owned(),
            registry: flag(extra, "--registry"),
            ca_dir: flag(extra, "--ca-dir"),
            _stdout: stdout.into_inner(),
        })
    }

    /// Everything the relay has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.with_extension("log")).unwrap_or_default()
    }

    /// Waits until the relay's log holds `needle`; returns the log.
    pub fn wait_log(&self, needle: &str, wait: Duration) -> Result<String> {
        let deadline = Instant::now() + wait;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(log);
            }
            if Instant::now() >= deadline {
                anyhow::bail!("the relay did not log {needle:?} within {wait:?}; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A fresh join token from `token create`.
    pub fn token(&self) -> Result<String> {
        self.cli_last_line(&["token", "create", "--ttl", "10m"])
    }

    /// Runs an admin command (`token ...`, `api-key ...`, `node ...`) on
    /// this relay's state dir (and registry); returns stdout, failing on a
    /// non-zero exit.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(relay_bin());
        cmd.args(args).arg("--state-dir").arg(&self.state);
        if let Some(registry) = &self.registry {
            cmd.args(["--registry", registry]);
        }
        if let Some(ca_dir) = &self.ca_dir {
            cmd.args(["--ca-dir", ca_dir]);
        }
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "tunnelgate-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The last line an admin command printed (where tokens and keys go).
    pub fn cli_last_line(&self, args: &[&str]) -> Result<String> {
        Ok(self
            .cli(args)?
            .lines()
            .last()
            .with_context(|| format!("{args:?} printed nothing"))?
            .to_owned())
    }

    /// Writes a control-plane client certificate of `tenant` named `name`
    /// to `out` (ca.pem, cert.pem, key.pem); returns what the command said.
    pub fn client_cert(&self, tenant: &str, name: &str, out: &Path) -> Result<String> {
        let out = out.to_str().context("a UTF-8 path")?;
        self.cli(&[
            "client-cert",
            "create",
            "--tenant",
            tenant,
            "--name",
            name,
            "--out",
            out,
        ])
    }

    /// The value of one metric series, `name` or `name{labels}`, from the
    /// metrics listener now; 0 when it has not been counted yet.
    pub fn metric(&self, series: &str) -> u64 {
        let (_, text) = http_get(self.metrics, "/metrics").expect("the metrics listener answers");
        let prefix = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| {
                v.trim().parse().expect("a counter is a whole number")
            })
    }

    /// `DOCKER_HOST` for `node` through this relay.
    pub fn docker_host(&self, node: &str) -> String {
        format!("tcp://{}/nodes/{node}", self.api)
    }

    /// Waits until `node` is in the node list with the daemon reachable.
    pub fn wait_for_node(&self, node: &str) -> Result<serde_json::Value> {
        self.wait_for(node, |n| n["daemon_reachable"] == true)
    }

    /// Waits until this relay takes the API key `key` (made on its state
    /// dir, it is read within a second).
    pub fn wait_for_key(&self, key: &str) -> Result<()> {
        let bearer = format!("Authorization: Bearer {key}\r\n");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get_with(self.api, "/v1/whoami", &bearer)?.0 != 200 {
            if Instant::now() > deadline {
                bail!("the relay never took the new API key");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until `node` is listed and `ready` holds for it.
    pub fn wait_for(
        &self,
        node: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = http_get(self.api, &format!("/v1/nodes/{node}")) {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                if ready(&v) {
                    return Ok(v);
                }
            }
            if Instant::now() > deadline {
                bail!("node {node} did not come up through the relay");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Gives the relay whose state dir is `to` the installation CA of `from`,
/// as an operator mounts one CA into every relay of a cluster.
pub fn share_ca(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

/// An agent process.
pub fn start_agent(
    relay: &Relay,
    node: &str,
    docker: &str,
    state: &Path,
    token: Option<&str>,
) -> Result<Proc> {
    AgentCmd::new(relay, node, docker, state, token).spawn()
}

/// An agent command line to adjust before spawning.
pub struct AgentCmd {
    /// Runs the agent inside this command (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
    pub args: Vec<String>,
}

impl AgentCmd {
    pub fn new(relay: &Relay, node: &str, docker: &str, state: &Path, token: Option<&str>) -> Self {
        Self::to(relay.agent, node, docker, state, token)
    }

    /// The same for a relay whose agent listener is at `agent` (e.g. one
    /// running in the test's own process).
    pub fn to(
        agent: SocketAddr,
        node: &str,
        docker: &str,
        state: &Path,
        token: Option<&str>,
    ) -> Self {
        let mut args: Vec<String> = [
            "--relay",
            &agent.to_string(),
            "--node-id",
            node,
            "--docker",
            docker,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--state-dir".into());
        args.push(state.display().to_string());
        if let Some(t) = token {
            args.push("--token".into());
            args.push(t.into());
        }
        Self {
            prefix: Vec::new(),
            args,
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    pub fn spawn(self) -> Result<Proc> {
        self.spawn_to(None)
    }

    /// Spawns with the agent's log (stderr) going to `log`.
    pub fn spawn_logged(self, log: &Path) -> Result<Proc> {
        self.spawn_to(Some(std::fs::File::create(log)?))
    }

    fn spawn_to(self, log: Option<std::fs::File>) -> Result<Proc> {
        let bin = agent_bin();
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1");
        if let Some(log) = log {
            cmd.stderr(log);
        }
        let child = cmd.spawn().context("spawning tunnelgate-agent")?;
        Ok(Proc {
            child,
            name: "agent",
        })
    }
}

/// A relay with one agent serving the real dockerd as node `node`.
pub struct Tunnel {
    pub relay: Relay,
    pub agent: Proc,
    pub node: String,
    pub dir: tempfile::TempDir,
}

impl Tunnel {
    pub fn start(node: &str) -> Result<Self> {
        Self::start_with(node, &[])
    }

    /// Starts with extra agent flags, e.g. `["--transport", "tcp"]`.
    pub fn start_with(node: &str, agent_args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let relay = Relay::start(&dir.path().join("relay"))?;
        let token = relay.token()?;
        let mut cmd = AgentCmd::new(
            &relay,
            node,
            &docker_endpoint(),
            &dir.path().join("agent"),
            Some(&token),
        );
        for a in agent_args {
            cmd = cmd.arg(a);
        }
        let agent = cmd.spawn()?;
        relay.wait_for_node(node)?;
        Ok(Self {
            relay,
            agent,
            node: node.to_owned(),
            dir,
        })
    }

    pub fn docker(&self) -> Docker {
        Docker::new(self.relay.docker_host(&self.node))
    }
}

/// Longest a single docker call may take in a test: generous, since the
/// machine is shared, but finite.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// The docker CLI aimed at one `DOCKER_HOST`.
#[derive(Clone, Debug)]
pub struct Docker {
    pub host: String,
}

impl Docker {
    pub fn new(host: impl Into<String>) -> Self {
        Self { host: host.into() }
    }

    /// The real daemon, directly.
    pub fn direct() -> Self {
        Self::new(docker_endpoint())
    }

    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("docker");
        c.args(args)
            .env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    /// Runs docker with `stdin` and returns its output, whatever the status.
    /// A call still running after [`CALL_TIMEOUT`] is killed and reported,
    /// so a hang fails the test instead of stalling the suite.
    pub fn output_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Result<Output> {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut input = child.stdin.take().expect("piped stdin");
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let read_all = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
        let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
        let deadline = Instant::now() + CALL_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`docker {}` via {} hung for {CALL_TIMEOUT:?} and was killed",
                    args.join(" "),
                    self.host
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let _ = writer.join();
        Ok(Output {
            status,
            stdout: stdout.join().expect("reader thread"),
            stderr: stderr.join().expect("reader thread"),
        })
    }

    /// Runs docker and returns stdout; fails with stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8(self.ok_bytes(args, b"")?)?)
    }

    /// Runs docker with `stdin`, returns stdout bytes; fails if it failed.
    pub fn ok_bytes(&self, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>> {
        let out = self.output_with_stdin(args, stdin)?;
        if !out.status.success() {
            bail!(
                "`docker {}` via {} failed ({}): {}",
                args.join(" "),
                self.host,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(out.stdout)
    }
}

/// Calls in a loop on a thread until told to stop, at most 5,000 times
/// and 3 minutes, counting successes and keeping each failure's text.
pub struct CallLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicU64>,
    failures: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

impl CallLoop {
    /// Starts calling `call(i)` for i = 0, 1, ...
    pub fn start(call: impl Fn(u64) -> Result<()> + Send + 'static) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            move || {
                let started = Instant::now();
                for i in 0..5_000 {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(180)
                    {
                        break;
                    }
                    match call(i) {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{e:#}")),
                    }
                }
            }
        });
        Self {
            stop,
            ok,
            failures,
            thread,
        }
    }

    /// Stops it; returns the successes and the failures.
    pub fn finish(self) -> (u64, Vec<String>) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .expect("the call loop thread does not panic");
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// A plain HTTP/1.0 GET; returns status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let (status, _, body) = http_get_full(addr, path)?;
    Ok((status, body))
}

/// A plain HTTP/1.0 GET; returns status, the raw header block and body.
pub fn http_get_full(addr: SocketAddr, path: &str) -> Result<(u16, String, String)> {
    http_get_with(addr, path, "")
}

/// [`http_get_full`] with extra header lines, each ending in `\r\n`.
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> Result<(u16, String, String)> {
    http_call_with(addr, "GET", path, headers)
}

/// A plain HTTP/1.0 call without a body, with extra header lines; returns
/// status, the raw header block and body.
pub fn http_call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n{headers}\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// Deterministic pseudo-random bytes (xorshift), so large payloads can be
/// compared without storing a copy.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads lines from a child's stdout on a thread, so a test can wait for
/// one with a bound.
pub struct LineReader {
    rx: std::sync::mpsc::Receiver<String>,
}

impl LineReader {
    pub fn new(stdout: impl Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { rx }
    }

    /// The next line, or `None` at end of stream or after `wait`.
    pub fn next_within(&self, wait: Duration) -> Option<String> {
        self.rx.recv_timeout(wait).ok()
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for(&self, needle: &str, wait: Duration) -> Result<String> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("stream ended before {needle:?}")
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        bail!("no line with {needle:?} within {wait:?}")
    }
}
/// Live cluster members named `ids`, as agents rank them (their
/// addresses play no part in the ranking).
pub fn members(ids: &[&str]) -> Vec<tunnelgate_proto::message::RelayMember> {
    ids.iter()
        .map(|id| tunnelgate_proto::message::RelayMember {
            relay_id: tunnelgate_proto::RelayId::new(*id).expect("a valid relay id"),
            agent_addr: String::new(),
            draining: false,
        })
        .collect()
}

pub mod etcd;
pub mod netns;
pub mod scenarios;

/// A control-plane client of a relay whose API speaks TLS: trusts the
/// installation's CA, optionally presents a client certificate and an API
/// key. Plain HTTP/1.0, one request per connection.
#[derive(Clone)]
pub struct ApiClient {
    pub addr: SocketAddr,
    tls: std::sync::Arc<rustls::ClientConfig>,
    pub bearer: Option<String>,
}

impl ApiClient {
    /// Trusts `ca.pem` of `dir`; presents `cert.pem`/`key.pem` there if they exist.
    pub fn new(addr: SocketAddr, dir: &Path) -> Result<Self> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
        for cert in tunnelgate_session::tls::certs_from_pem(&ca)? {
            roots.add(cert)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = if dir.join("cert.pem").exists() {
            let id = tunnelgate_session::tls::Identity::from_pem(
                &std::fs::read_to_string(dir.join("cert.pem"))?,
                &std::fs::read_to_string(dir.join("key.pem"))?,
            )?;
            builder.with_client_auth_cert(id.chain, id.key)?
        } else {
            builder.with_no_client_auth()
        };
        Ok(Self {
            addr,
            tls: std::sync::Arc::new(config),
            bearer: None,
        })
    }

    pub fn with_bearer(mut self, key: &str) -> Self {
        self.bearer = Some(key.to_owned());
        self
    }

    /// GET `path`; returns status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.call("GET", path)
    }

    /// `method path` with no body; returns status and body.
    pub fn call(&self, method: &str, path: &str) -> Result<(u16, String)> {
        let tcp = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), name.to_owned())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let auth = self
            .bearer
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: test\r\n{auth}Content-Length: 0\r\n\r\n"
        )?;
        let mut resp = Vec::new();
        // A TLS peer may close without close_notify after HTTP/1.0; keep what came.
        if let Err(e) = s.read_to_end(&mut resp) {
            if resp.is_empty() {
                return Err(e.into());
            }
        }
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Ok((status, body.to_owned()))
    }

    /// Waits until `GET /v1/nodes/<node>` answers 200 with the daemon reachable.
    pub fn wait_for_node(&self, node: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, body)) = self.get(&format!("/v1/nodes/{node}")) {
                if body.contains("\"daemon_reachable\":true") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {node} did not come up through the relay");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
