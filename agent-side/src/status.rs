//! What a running agent tells `tunnelgate-agent status` on the same host:
//! `status.json` in its state dir, rewritten when a session comes or goes
//! or the daemon's reachability changes, and every [`REFRESH`] besides, so
//! a reader can tell a live agent from one that died without a word.
//!
//! This module must not reach the relay or the daemon: it only records
//! what the running agent saw, and reads it back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::message::DockerFacts;

/// How often the file is rewritten while nothing changes.
const REFRESH: Duration = Duration::from_secs(5);
/// A file older than this was left by an agent that is not running.
pub const STALE_AFTER: Duration = Duration::from_secs(20);
/// The file's name in the state dir.
pub const FILE: &str = "status.json";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One relay session the agent holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Which of the agent's sessions (`--relay-sessions`).
    pub slot: usize,
    /// The relay's id.
    pub relay_id: String,
    /// Where the agent reached it.
    pub relay_addr: String,
    /// `quic` or `tcp`.
    pub transport: String,
    /// Seconds since the epoch.
    pub connected_since: u64,
}

/// The agent as it last saw itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The node this agent serves.
    pub node_id: String,
    /// The agent's process id.
    pub pid: u32,
    /// When this was written, seconds since the epoch.
    pub updated_at: u64,
    /// Its relay sessions now.
    pub sessions: Vec<SessionStatus>,
    /// The Docker endpoint it serves.
    pub docker: String,
    /// Whether it reaches the Docker daemon.
    pub daemon_reachable: bool,
    /// Why not, when it does not.
    pub daemon_error: Option<String>,
}

/// The running agent's status, written to its file on every change.
#[derive(Debug)]
pub struct Board {
    path: Option<PathBuf>,
    status: Mutex<Status>,
}

impl Board {
    /// A board writing to `path` (none: kept in memory only, as the load
    /// tester's thousands of simulated agents want).
    pub fn new(path: Option<PathBuf>, node_id: &str, docker: &str) -> Self {
        Self {
            path,
            status: Mutex::new(Status {
                node_id: node_id.to_owned(),
                pid: std::process::id(),
                docker: docker.to_owned(),
                ..Default::default()
            }),
        }
    }

    fn change(&self, f: impl FnOnce(&mut Status)) {
        let status = {
            let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut status);
            status.updated_at = unix_now();
            status.clone()
        };
        let Some(path) = &self.path else { return };
        let text = serde_json::to_vec_pretty(&status).expect("a status serializes");
        if let Err(e) = tunnelgate_session::files::write_atomic(path, &text, false) {
            tracing::debug!(path = %path.display(), error = %e, "cannot write the status file");
        }
    }

    /// Slot `slot` holds a session with `relay_id` at `relay_addr`.
    pub fn connected(&self, slot: usize, relay_id: &str, relay_addr: &str, transport: &str) {
        self.change(|s| {
            s.sessions.retain(|x| x.slot != slot);
            s.sessions.push(SessionStatus {
                slot,
                relay_id: relay_id.to_owned(),
                relay_addr: relay_addr.to_owned(),
                transport: transport.to_owned(),
                connected_since: unix_now(),
            });
            s.sessions.sort_by_key(|x| x.slot);
        });
    }

    /// Slot `slot` lost its session.
    pub fn disconnected(&self, slot: usize) {
        self.change(|s| s.sessions.retain(|x| x.slot != slot));
    }

    /// The daemon's facts changed.
    pub fn daemon(&self, facts: &DockerFacts) {
        self.change(|s| {
            s.daemon_reachable = facts.reachable;
            s.daemon_error = facts.error.clone();
        });
    }

    /// Rewrites the file every [`REFRESH`] until `cancel`, then says the
    /// agent stopped by writing no sessions.
    pub async fn keep_fresh(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(REFRESH) => self.change(|_| {}),
                () = cancel.cancelled() => {
                    self.change(|s| s.sessions.clear());
                    return;
                }
            }
        }
    }
}

/// Reads the status a running agent keeps in `state_dir`.
pub fn read(state_dir: &Path) -> Result<Status, String> {
    let path = state_dir.join(FILE);
    let text = std::fs::read(&path).map_err(|e| {
        format!(
            "no agent status at {} ({e}); is tunnelgate-agent running with --state-dir {}?",
            path.display(),
            state_dir.display()
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| format!("{} is unreadable: {e}", path.display()))
}

/// Whether the process that wrote `status` still runs (on Linux; elsewhere
/// the file's age alone tells).
pub fn alive(status: &Status) -> bool {
    let proc = Path::new("/proc");
    !proc.exists() || proc.join(status.pid.to_string()).exists()
}

/// A report for a person, and whether the agent is connected: running
/// (`alive`, and its file fresh) and holding at least one relay session.
pub fn report(status: &Status, now: u64, alive: bool) -> (String, bool) {
    let age = now.saturating_sub(status.updated_at);
    let rfc3339 =
        |t: u64| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string();
    let mut out = format!("node {} (agent pid {})\n", status.node_id, status.pid);
    if !alive {
        out.push_str("not running: its process is gone; start it (e.g. `systemctl start tunnelgate-agent`) and see its log\n");
        return (out, false);
    }
    if age > STALE_AFTER.as_secs() {
        out.push_str(&format!(
            "not running: its status was last written {age} s ago ({}); start it (e.g. `systemctl start tunnelgate-agent`) and see its log\n",
            rfc3339(status.updated_at)
        ));
        return (out, false);
    }
    if status.sessions.is_empty() {
        out.push_str(
            "not connected to any relay; its log says why (`journalctl -u tunnelgate-agent`)\n",
        );
    }
    for s in &status.sessions {
        out.push_str(&format!(
            "connected to relay {} at {} over {} since {}\n",
            s.relay_id,
            s.relay_addr,
            s.transport,
            rfc3339(s.connected_since)
        ));
    }
    match (status.daemon_reachable, &status.daemon_error) {
        (true, _) => out.push_str(&format!("Docker daemon reachable at {}\n", status.docker)),
        (false, e) => out.push_str(&format!(
            "Docker daemon NOT reachable at {}: {}\n",
            status.docker,
            e.as_deref().unwrap_or("not probed yet")
        )),
    }
    (out, !status.sessions.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_follows_sessions_and_the_daemon_and_goes_stale() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::new(Some(dir.path().join(FILE)), "web-1", "unix:///d.sock");
        board.daemon(&DockerFacts {
            reachable: true,
            ..Default::default()
        });
        let (text, connected) = report(&read(dir.path()).unwrap(), unix_now(), true);
        assert!(!connected && text.contains("not connected"), "{text}");
        board.connected(1, "relay-b", "10.0.0.2:7443", "tcp");
        board.connected(0, "relay-a", "10.0.0.1:7443", "quic");
        let status = read(dir.path()).unwrap();
        assert_eq!(status.sessions[0].relay_id, "relay-a");
        assert!(alive(&status), "this test process wrote it");
        let (text, connected) = report(&status, unix_now(), true);
        assert!(connected, "{text}");
        assert!(text.contains("relay-a at 10.0.0.1:7443 over quic") && text.contains("reachable"));
        board.disconnected(0);
        assert_eq!(read(dir.path()).unwrap().sessions.len(), 1);
        let (text, connected) = report(&status, unix_now() + 60, true);
        assert!(!connected && text.contains("not running"), "{text}");
        let (text, connected) = report(&status, unix_now(), false);
        assert!(!connected && text.contains("process is gone"), "{text}");
        assert!(read(&dir.path().join("nowhere"))
            .unwrap_err()
            .contains("--state-dir"));
    }
}
