//! Separate hosts for tests: a network namespace joined to the root one by
//! a veth pair, and a real dockerd in it with a TLS port, as a node's host
//! whose daemon port relays may or may not reach.
//!
//! Needs root (for `ip netns`, `nsenter` and iptables), as CI has.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{docker_endpoint, Docker, Proc};

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {args:?} ({e}); install iproute2 and iptables (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "{args:?} failed: {}; this test needs root for network namespaces",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A namespace joined to the root one by a veth pair; removed on drop.
pub struct Host {
    pub name: String,
    /// The root namespace's end of the veth pair.
    pub relay_ip: String,
    /// The host's own address.
    pub host_ip: String,
}

impl Host {
    /// A host named after the test (`tag`, a few letters) and this process.
    pub fn new(tag: &str) -> Self {
        let id = std::process::id() % 10_000;
        let name = format!("tg-{tag}-{id}");
        let (outside, inside) = (format!("tg{tag}h{id}"), format!("tg{tag}a{id}"));
        // Link-local addresses: never routed anywhere beyond this veth
        // pair; the tag picks the third octet so tests in one process
        // never share a subnet.
        let third = tag.bytes().fold(id as u32, |a, b| a * 31 + b as u32) % 250 + 1;
        let fourth = 4 * (id % 60) + 1;
        let relay_ip = format!("169.254.{third}.{fourth}");
        let host_ip = format!("169.254.{third}.{}", fourth + 1);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &outside]).output();
        sh(&["ip", "netns", "add", &name]);
        let host = Self {
            name: name.clone(),
            relay_ip: relay_ip.clone(),
            host_ip: host_ip.clone(),
        };
        sh(&[
            "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        sh(&["ip", "link", "set", &inside, "netns", &name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{relay_ip}/30"),
            "dev",
            &outside,
        ]);
        sh(&["ip", "link", "set", &outside, "up"]);
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &inside,
        ]);
        host.exec(&["ip", "link", "set", &inside, "up"]);
        host.exec(&["ip", "link", "set", "lo", "up"]);
        host
    }

    /// Runs a command in the host's namespace; it must succeed.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// A prefix that runs a process in the host's network namespace only,
    /// keeping the root's mounts (dockerd needs its cgroups, which
    /// `ip netns exec` hides).
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net=/var/run/netns/{}", self.name),
        ]
    }

    /// Drops outbound UDP from the host (or stops dropping it).
    pub fn block_udp(&self, block: bool) {
        let op = if block { "-A" } else { "-D" };
        self.exec(&["iptables", op, "OUTPUT", "-p", "udp", "-j", "DROP"]);
    }

    /// Adds (or removes) a rule that answers TCP to `port` on this host
    /// with `action`: `DROP` black-holes it, `REJECT` resets it.
    pub fn block_tcp_port(&self, port: u16, action: &str, block: bool) {
        let op = if block { "-I" } else { "-D" };
        let port = port.to_string();
        let mut args = vec![
            "iptables", op, "INPUT", "-p", "tcp", "--dport", &port, "-j", action,
        ];
        if action == "REJECT" {
            args.extend(["--reject-with", "tcp-reset"]);
        }
        self.exec(&args);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A real dockerd on `host`: a unix socket for its agent, and a TLS port
/// (`--tlsverify`) with the files `tunnelgate-agent docker-tls` wrote.
pub struct NodeDockerd {
    pub proc: Proc,
    pub dir: PathBuf,
    pub port: u16,
}

impl NodeDockerd {
    /// Starts dockerd in `host`'s network namespace with its data under
    /// `dir`, TLS on `port` from the files in `tls`.
    pub fn start(host: &Host, dir: &Path, tls: &Path, port: u16) -> Result<Self> {
        std::fs::create_dir_all(dir.join("etc"))?;
        let t = |f: &str| tls.join(f).display().to_string();
        let d = |f: &str| dir.join(f).display().to_string();
        // Its own /etc/docker, so its daemon ID (from key.json there) is
        // its own, as on a host of its own.
        let script = format!(
            "mount --bind {etc} /etc/docker && exec dockerd --host unix://{sock} \
             --host tcp://{ip}:{port} --tlsverify --tlscacert={ca} --tlscert={cert} --tlskey={key} \
             --data-root {root} --exec-root {exec} --pidfile {pid} --iptables=false \
             --ip6tables=false --bridge=none --storage-driver=vfs",
            etc = d("etc"),
            sock = d("docker.sock"),
            ip = host.host_ip,
            ca = t("ca.pem"),
            cert = t("server-cert.pem"),
            key = t("server-key.pem"),
            root = d("root"),
            exec = d("exec"),
            pid = d("pid"),
        );
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", host.name))
            .args(["unshare", "-m", "sh", "-c", &script]);
        Self::spawn(cmd, dir, port)
    }

    /// Starts a second dockerd on this host (no network namespace, no TCP
    /// port), a unix socket only, with its data and its own /etc/docker
    /// (so its own daemon ID) under `dir`: another node's daemon.
    pub fn start_local(dir: &Path) -> Result<Self> {
        Self::start_local_with(dir, &[])
    }

    /// [`Self::start_local`] with more dockerd arguments (`--label k=v`).
    pub fn start_local_with(dir: &Path, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir.join("etc"))?;
        let d = |f: &str| dir.join(f).display().to_string();
        let script = format!(
            "mount --bind {etc} /etc/docker && exec dockerd --host unix://{sock} \
             --data-root {root} --exec-root {exec} --pidfile {pid} --iptables=false \
             --ip6tables=false --bridge=none --storage-driver=vfs {extra}",
            extra = extra.join(" "),
            etc = d("etc"),
            sock = d("docker.sock"),
            root = d("root"),
            exec = d("exec"),
            pid = d("pid"),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c", &script]);
        Self::spawn(cmd, dir, 0)
    }

    fn spawn(mut cmd: Command, dir: &Path, port: u16) -> Result<Self> {
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning dockerd")?;
        let me = Self {
            proc: Proc {
                child,
                name: "node dockerd",
            },
            dir: dir.to_owned(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while me.docker().ok(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the node's dockerd did not start; its log:\n{}",
                    std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(me)
    }

    /// Its unix socket, `unix:///...`, as its agent reaches it.
    pub fn socket(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// The docker CLI on its unix socket.
    pub fn docker(&self) -> Docker {
        Docker::new(self.socket())
    }

    /// Its daemon ID.
    pub fn id(&self) -> Result<String> {
        Ok(self
            .docker()
            .ok(&["info", "--format", "{{.ID}}"])?
            .trim()
            .to_owned())
    }

    /// Copies the busybox test image over from the suite's dockerd.
    pub fn load_busybox(&self) -> Result<()> {
        let saved = Docker::new(docker_endpoint()).ok_bytes(&["save", "busybox:latest"], b"")?;
        self.docker().ok_bytes(&["load"], &saved)?;
        Ok(())
    }
}

impl Drop for NodeDockerd {
    fn drop(&mut self) {
        // SIGTERM lets dockerd unmount and remove its exec root; a kill
        // follows if it lingers.
        self.proc.terminate();
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.proc.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
