//! A real etcd for the cluster tests: on loopback, its own data dir and
//! ports, stopped when dropped. Debian's `etcd-server` provides it
//! (`scripts/install-test-deps` installs it).

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running etcd.
pub struct Etcd {
    child: Child,
    /// `HOST:PORT` of its client port.
    pub client: String,
    peer: u16,
    /// Where its data and log are.
    pub dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    /// Starts etcd; a port another process took meanwhile makes it try
    /// other ports, a few times.
    pub fn start() -> Result<Self> {
        let mut last = None;
        for _ in 0..5 {
            match Self::try_start() {
                Ok(e) => return Ok(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn try_start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let child = Self::spawn(&dir, client, peer)?;
        let mut etcd = Self {
            child,
            client: format!("127.0.0.1:{client}"),
            peer,
            dir,
        };
        etcd.wait_healthy()?;
        Ok(etcd)
    }

    /// Stops etcd (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        let port = self.client.rsplit_once(':').expect("host:port").1.parse()?;
        self.child = Self::spawn(&self.dir, port, self.peer)?;
        self.wait_healthy()
    }

    fn spawn(dir: &tempfile::TempDir, client: u16, peer: u16) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("etcd.log"))?;
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning etcd (Debian: apt-get install etcd-server)")
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("etcd exited with {status}; its log:\n{}", self.log());
            }
            if TcpStream::connect(&self.client).is_ok() && self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("etcd did not answer within 30 s; its log:\n{}", self.log())
    }

    fn healthy(&self) -> bool {
        matches!(crate::support::http_get(self.client.parse().expect("an address"), "/health"),
                 Ok((200, body)) if body.contains("true"))
    }

    /// The relay flag value for this etcd.
    pub fn registry(&self) -> String {
        format!("etcd://{}", self.client)
    }

    /// The flags that make a relay `id` a member of this etcd's cluster,
    /// its peer port on loopback and its lease `lease` long.
    pub fn relay_args(&self, id: &str, lease: &str) -> Vec<String> {
        [
            "--registry",
            &self.registry(),
            "--relay-id",
            id,
            "--peer-listen",
            "127.0.0.1:0",
            "--registry-lease-ttl",
            lease,
        ]
        .map(String::from)
        .to_vec()
    }

    /// The value of `key`, if it is set.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let text = self.etcdctl(&["get", "--print-value-only", key])?;
        let text = text.trim();
        Ok((!text.is_empty()).then(|| text.to_owned()))
    }

    /// What `etcdctl ARGS` prints against this etcd.
    fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &self.client])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .context("running etcdctl (Debian: apt-get install etcd-client)")?;
        anyhow::ensure!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// The keys under `prefix`, as `etcdctl get --prefix --keys-only` prints them.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .etcdctl(&["get", "--prefix", "--keys-only", prefix])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
