//! The relay under test: a real `tunnelgate-relay serve` process on
//! loopback with a throwaway state dir, and its resource use read from
//! `/proc`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A relay process, killed when dropped.
pub struct RelayProc {
    child: Child,
    /// Docker API listener.
    pub api: SocketAddr,
    /// Agent listener (QUIC and TLS/TCP).
    pub agents: SocketAddr,
    /// Prometheus listener.
    pub metrics: SocketAddr,
    state: tempfile::TempDir,
    bin: PathBuf,
    extra_args: Vec<String>,
}

/// CPU time and memory of a process at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User plus system CPU seconds so far.
    pub cpu_secs: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Exact CPU time and context switches of a process, per thread: for
/// per-call costs, where `/proc/PID/stat`'s clock ticks are too coarse.
#[derive(Debug, Clone, Default)]
pub struct Sched {
    /// Per thread id: nanoseconds on a CPU, user and system
    /// (`schedstat`), and voluntary plus involuntary context switches.
    threads: HashMap<u32, (u64, u64)>,
}

impl Sched {
    /// The counts of process `pid`'s threads now. A thread that ends
    /// between the listing and its read is left out.
    pub fn of(pid: u32) -> Result<Self> {
        let mut threads = HashMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let dir = task?.path();
            let Some(tid) = dir.file_name().and_then(|n| n.to_str()?.parse().ok()) else {
                continue;
            };
            let (Ok(stat), Ok(status)) = (
                std::fs::read_to_string(dir.join("schedstat")),
                std::fs::read_to_string(dir.join("status")),
            ) else {
                continue;
            };
            let cpu_ns = stat
                .split_whitespace()
                .next()
                .context("empty schedstat")?
                .parse::<u64>()?;
            let mut switches = 0;
            for line in status.lines() {
                if let Some(n) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    switches += n.trim().parse::<u64>()?;
                }
            }
            threads.insert(tid, (cpu_ns, switches));
        }
        Ok(Self { threads })
    }

    /// CPU nanoseconds and context switches between `before` and this
    /// reading: threads started since count whole, and a thread that
    /// ended meanwhile loses only its last stretch (a process's totals
    /// would otherwise fall when a thread ends).
    pub fn since(&self, before: &Sched) -> (u64, u64) {
        self.threads
            .iter()
            .fold((0, 0), |(cpu, sw), (tid, (c, s))| {
                let (c0, s0) = before.threads.get(tid).copied().unwrap_or_default();
                (cpu + c.saturating_sub(c0), sw + s.saturating_sub(s0))
            })
    }
}

/// Where the relay binary is: next to this binary, as cargo builds them.
pub fn default_relay_bin() -> PathBuf {
    sibling_bin("tunnelgate-relay")
}

/// The path of binary `name` built beside this one (test binaries live
/// one level deeper, in deps/), or just `name` for `PATH` to find.
pub fn sibling_bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| {
            let dir = p.parent()?.to_owned();
            let dir = if dir.ends_with("deps") {
                dir.parent()?.to_owned()
            } else {
                dir
            };
            Some(dir.join(name))
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

impl RelayProc {
    /// Starts `bin serve` on ephemeral loopback ports, with `extra_args`
    /// (e.g. `--heartbeat-interval 15s`) after the load tester's own.
    pub fn start(bin: &Path, extra_args: &[String]) -> Result<Self> {
        Self::start_in_cluster(bin, extra_args, None)
    }

    /// Starts a relay whose state dir holds the installation CA of
    /// `ca_from` (none: it makes its own, which others may then share); in
    /// a cluster `extra_args` hold its `--registry` and `--relay-id`.
    pub fn start_in_cluster(
        bin: &Path,
        extra_args: &[String],
        ca_from: Option<&RelayProc>,
    ) -> Result<Self> {
        let state = tempfile::tempdir()?;
        if let Some(first) = ca_from {
            for file in ["ca.pem", "ca-key.pem"] {
                std::fs::copy(first.state.path().join(file), state.path().join(file))
                    .with_context(|| format!("sharing {file}"))?;
            }
        }
        let (child, [api, agents, metrics]) = spawn(
            bin,
            state.path(),
            ["127.0.0.1:0"; 3].map(String::from),
            extra_args,
        )?;
        Ok(Self {
            child,
            api,
            agents,
            metrics,
            state,
            bin: bin.to_owned(),
            extra_args: extra_args.to_vec(),
        })
    }

    /// Kills the relay (SIGKILL): no drain, no leaving the cluster.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the relay as an operator's restart would (SIGTERM: it drains
    /// its agents and ends), or as a crash does (`crash`: SIGKILL, no
    /// drain), then starts it again on the same ports and state. Returns
    /// how long the relay was away.
    pub fn restart(&mut self, crash: bool) -> Result<std::time::Duration> {
        let started = std::time::Instant::now();
        let signal = if crash { "-KILL" } else { "-TERM" };
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed", self.child.id());
        self.child.wait()?;
        let addrs = [self.api, self.agents, self.metrics].map(|a| a.to_string());
        let (child, _) = spawn(&self.bin, self.state.path(), addrs, &self.extra_args)?;
        self.child = child;
        Ok(started.elapsed())
    }

    /// A join token for simulated agents.
    pub fn token(&self) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["token", "create", "--ttl", "2h", "--state-dir"])
            .arg(self.state.path());
        // A cluster's records are in its registry, as the relay was told.
        if let Some(i) = self.extra_args.iter().position(|a| a == "--registry") {
            cmd.args(&self.extra_args[i..(i + 2).min(self.extra_args.len())]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!(
                "token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .last()
            .context("no token printed")?
            .to_owned())
    }

    /// The relay's CPU time and memory now.
    pub fn usage(&self) -> Result<Usage> {
        Usage::of(self.child.id())
    }

    /// Its exact CPU time and context switches so far.
    pub fn sched(&self) -> Result<Sched> {
        Sched::of(self.child.id())
    }

    /// Agent sessions the relay holds, from its metrics: cheaper for the
    /// relay than listing tens of thousands of nodes.
    pub async fn agents_connected(&self) -> Result<u64> {
        let text = crate::client::fetch_text(self.metrics, "/metrics").await?;
        Ok(sum_metric(&text, "tunnelgate_relay_agents_connected"))
    }
}

/// The sum of every sample of `name` (all label sets) in Prometheus text.
pub fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Starts `bin serve` on `[api, agent, metrics]` addresses; waits for its
/// listening line and returns the addresses it bound.
fn spawn(
    bin: &Path,
    state: &Path,
    [api, agent, metrics]: [String; 3],
    extra_args: &[String],
) -> Result<(Child, [SocketAddr; 3])> {
    let mut child = Command::new(bin)
        .args(["serve", "--api-listen", &api, "--agent-listen", &agent, "--metrics-listen", &metrics])
        .arg("--state-dir")
        .arg(state)
        .args(extra_args)
        // Warnings only, and yamux's goodbye failures muted as the relay's
        // default filter mutes them, unless RELAY_LOG asks for more.
        .env(
            "RUST_LOG",
            std::env::var("RELAY_LOG").unwrap_or_else(|_| "warn,yamux=error".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}; build it with `cargo build --release -p tunnelgate-relay` or pass --relay-bin", bin.display()))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("relay stdout")?).read_line(&mut line)?;
    let l: tunnelgate_relay::ListeningLine = line.parse().map_err(anyhow::Error::msg)?;
    Ok((child, [l.api, l.agent, l.metrics]))
}

impl Usage {
    /// CPU and RSS of process `pid` so far, from `/proc`.
    pub fn of(pid: u32) -> Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name, which may hold spaces, in parens.
        let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields.get(11).context("no utime")?.parse::<f64>()?
            + fields.get(12).context("no stime")?.parse::<f64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(Usage {
            cpu_secs: ticks / clock_ticks(),
            rss_bytes: rss_kib * 1024,
        })
    }
}

/// Kernel clock ticks per second, as `getconf CLK_TCK` reports (100 on
/// every common Linux build).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::Sched;

    #[test]
    fn a_thread_that_ends_between_readings_never_makes_the_counts_wrap() {
        let before = Sched {
            threads: [(1, (1_000, 10)), (2, (5_000, 50))].into(),
        };
        // Thread 2 ended, thread 3 started.
        let after = Sched {
            threads: [(1, (1_600, 13)), (3, (200, 2))].into(),
        };
        assert_eq!(after.since(&before), (800, 5));
        let mine = Sched::of(std::process::id()).unwrap();
        assert!(mine.threads.contains_key(&std::process::id()), "{mine:?}");
    }
    #[test]
    fn metric_samples_are_summed_across_labels_only_for_that_name() {
        let text = "# HELP tunnelgate_relay_agents_connected x\n\
tunnelgate_relay_agents_connected{transport=\"quic\"} 3\n\
tunnelgate_relay_agents_connected{transport=\"tcp\"} 4\n\
tunnelgate_relay_agents_connected_total 100\n";
        assert_eq!(
            super::sum_metric(text, "tunnelgate_relay_agents_connected"),
            7
        );
        assert_eq!(super::sum_metric(text, "tunnelgate_relay_missing"), 0);
    }
}
