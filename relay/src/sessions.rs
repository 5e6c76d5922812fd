//! The session table: which agent session serves which node, and what the
//! node last told us about itself.
//!
//! Keyed by tenant and node id in a `DashMap`, so the front's lookups never contend
//! with each other. New calls go to a node's newest session. A replaced
//! session is not closed here: an agent moving from TLS/TCP to QUIC lets
//! the calls in flight on the old one finish and closes it itself, and a
//! dead one (the agent reconnected after a network change) ends by its
//! heartbeat timeout. Until then it stays listed behind the newer one, so
//! if the newer ends first (an agent that had two sessions here closes
//! one as it moves), calls go back to the older instead of the node
//! vanishing from a relay that still holds a session of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tunnelgate_proto::control::RelayControl;
use tunnelgate_proto::message::{DockerFacts, Hello};
use tunnelgate_proto::{NodeId, NodeKey, RelayId, TenantId};
use tunnelgate_session::Session;

/// Tells one session of this relay from every other a node had or will
/// have here, so a kept stream or a removal never acts on a newer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(u64);

/// A command run against a session's control machine (e.g. a drain).
pub type ControlCommand = tunnelgate_session::driver::Command<RelayControl>;

/// What the relay knows about a connected node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The hello the agent sent.
    pub hello: Hello,
    /// The daemon's state, updated as the agent reports changes.
    pub docker: DockerFacts,
    /// When the session was established.
    pub connected_since: SystemTime,
    /// The last heartbeat round trip the agent reported.
    pub rtt: Option<Duration>,
}

/// One live session in the table.
#[derive(Debug)]
pub struct Entry {
    /// The session itself.
    pub session: Session,
    /// Facts about the node.
    pub info: Mutex<NodeInfo>,
    /// Reaches the session's control machine.
    pub control: mpsc::Sender<ControlCommand>,
    /// Tenant and node.
    pub key: NodeKey,
    /// Serial of the certificate the agent connected with.
    pub cert_serial: String,
    /// When the session was established, in ns since the epoch: of two
    /// relays' claims on a node in the registry, the newer wins.
    pub epoch: u64,
    id: SessionId,
}

/// The JSON shape of a node in `/v1/nodes`, and of its facts in the
/// registry (without `rtt_ms`, which changes with every heartbeat).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id.
    pub node_id: NodeId,
    /// The host's name.
    pub hostname: String,
    /// The Docker engine's version, when the daemon is reachable.
    pub docker_version: Option<String>,
    /// The Docker engine's API version.
    pub docker_api_version: Option<String>,
    /// Whether the agent can reach its Docker daemon.
    pub daemon_reachable: bool,
    /// Why the daemon is unreachable, if it is.
    pub daemon_error: Option<String>,
    /// `quic` or `tcp`.
    pub transport: String,
    /// RFC 3339.
    pub connected_since: String,
    /// The last heartbeat round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The agent's release.
    pub agent_version: String,
    /// Operator labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The relay holding the session.
    pub relay_id: RelayId,
    /// The agent's policy: `full`, `read-only` or a policy file's name.
    pub policy: String,
}

/// What the fleet's view reads of a node: a small part of its
/// [`NodeView`], made without the rest, since the fleet asks on every
/// call about every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFacts {
    /// The node's id.
    pub node_id: NodeId,
    /// The host's name.
    pub hostname: String,
    /// Operator labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `quic` or `tcp`.
    pub transport: String,
    /// Why the daemon is unreachable, if it is.
    pub daemon_error: Option<String>,
    /// Whether the agent's policy lets calls change the node.
    pub writable: bool,
}

impl FleetFacts {
    /// Why the daemon is unreachable, when it is not `reachable`.
    fn daemon_error(reachable: bool, error: Option<&String>) -> Option<String> {
        (!reachable).then(|| error.cloned().unwrap_or_else(|| "unreachable".into()))
    }

    /// Whether an agent's `policy` lets calls change the node.
    fn writable(policy: &str) -> bool {
        policy != "read-only"
    }
}

impl From<&NodeView> for FleetFacts {
    fn from(v: &NodeView) -> Self {
        Self {
            node_id: v.node_id.clone(),
            hostname: v.hostname.clone(),
            labels: v.labels.clone(),
            transport: v.transport.clone(),
            daemon_error: Self::daemon_error(v.daemon_reachable, v.daemon_error.as_ref()),
            writable: Self::writable(&v.policy),
        }
    }
}

/// All live sessions of this relay.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Each node's live sessions here, oldest first, never empty.
    map: DashMap<NodeKey, Vec<Arc<Entry>>>,
    next_id: AtomicU64,
    /// Bumped on every insert and removal, so a caller can tell cheaply
    /// that the set of nodes held here is as it last looked.
    changed: AtomicU64,
}

/// What removing a session left of its node on this relay.
#[derive(Debug)]
pub enum Removed {
    /// It was not the node's current session: nothing changed for calls.
    NotCurrent,
    /// It was the node's last session here.
    Last,
    /// It was the current one; calls now go to this older session.
    Fallback(Arc<Entry>),
}

impl Sessions {
    /// Makes `session` the node's current session.
    pub fn insert(
        &self,
        session: Session,
        key: NodeKey,
        cert_serial: String,
        info: NodeInfo,
        control: mpsc::Sender<ControlCommand>,
    ) -> Arc<Entry> {
        let epoch = info
            .connected_since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let entry = Arc::new(Entry {
            session,
            info: Mutex::new(info),
            control,
            key: key.clone(),
            cert_serial,
            epoch,
            id: SessionId(self.next_id.fetch_add(1, Ordering::Relaxed)),
        });
        let mut held = self.map.entry(key).or_default();
        if let Some(old) = held.last() {
            tracing::info!(old = %old.session.transport(), new = %entry.session.transport(),
                           "new calls go to the node's newer session");
        }
        held.push(entry.clone());
        self.changed.fetch_add(1, Ordering::Release);
        entry
    }

    /// Takes `entry` out of the table.
    pub fn remove(&self, entry: &Entry) -> Removed {
        let dashmap::Entry::Occupied(mut held) = self.map.entry(entry.key.clone()) else {
            return Removed::NotCurrent;
        };
        let Some(at) = held.get().iter().position(|e| e.id == entry.id) else {
            return Removed::NotCurrent;
        };
        let was_current = at + 1 == held.get().len();
        held.get_mut().remove(at);
        self.changed.fetch_add(1, Ordering::Release);
        match held.get().last() {
            None => {
                held.remove();
                Removed::Last
            }
            Some(older) if was_current => Removed::Fallback(older.clone()),
            Some(_) => Removed::NotCurrent,
        }
    }

    /// The session serving `key`.
    pub fn get(&self, key: &NodeKey) -> Option<Arc<Entry>> {
        self.map.get(key).and_then(|e| e.value().last().cloned())
    }

    /// Every live session, each node's current one after its older ones.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.map.iter().flat_map(|e| e.value().clone()).collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every node's facts as this relay shares them with the cluster: its
    /// current session's view, in JSON, without the round trip time.
    pub fn facts(&self, relay_id: &RelayId) -> std::collections::HashMap<NodeKey, String> {
        self.map
            .iter()
            .filter_map(|e| {
                let mut view = e.value().last()?.view(relay_id);
                view.rtt_ms = None;
                let json = serde_json::to_string(&view).expect("views serialize");
                Some((e.key().clone(), json))
            })
            .collect()
    }

    /// The node list of `tenant`, sorted by node id.
    pub fn views(&self, tenant: &TenantId, relay_id: &RelayId) -> Vec<NodeView> {
        let mut views: Vec<_> = self
            .map
            .iter()
            .filter(|e| &e.key().tenant == tenant)
            .filter_map(|e| e.value().last().map(|s| s.view(relay_id)))
            .collect();
        views.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        views
    }
}

impl Sessions {
    /// The fleet's facts of `tenant`'s nodes held here, sorted by node id.
    pub fn fleet_facts(&self, tenant: &TenantId) -> Vec<FleetFacts> {
        let mut facts: Vec<_> = self
            .map
            .iter()
            .filter(|e| &e.key().tenant == tenant)
            .filter_map(|e| e.value().last().map(|s| s.fleet_facts()))
            .collect();
        facts.sort_unstable_by(|a, b| a.node_id.cmp(&b.node_id));
        facts
    }

    /// A number that changes whenever a session comes or goes: while it
    /// stays, [`Sessions::node_ids`] answers alike.
    pub fn generation(&self) -> u64 {
        self.changed.load(Ordering::Acquire)
    }

    /// The ids of `tenant`'s nodes held here, in no order.
    pub fn node_ids(&self, tenant: &TenantId) -> Vec<NodeId> {
        self.map
            .iter()
            .filter(|e| &e.key().tenant == tenant && !e.value().is_empty())
            .map(|e| e.key().node_id.clone())
            .collect()
    }
}

impl Entry {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeInfo> {
        // A panic while holding this short, await-free lock leaves plain
        // data behind; keep serving it.
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `f` to the node's facts.
    pub fn update(&self, f: impl FnOnce(&mut NodeInfo)) {
        f(&mut self.lock());
    }

    /// Applies `f` to the node's labels, without copying them (what a
    /// scoped caller's every call looks at).
    pub fn with_labels<T>(
        &self,
        f: impl FnOnce(&std::collections::BTreeMap<String, String>) -> T,
    ) -> T {
        f(&self.lock().hello.labels)
    }

    /// What the fleet's view reads of the node.
    fn fleet_facts(&self) -> FleetFacts {
        let info = self.lock();
        FleetFacts {
            node_id: info.hello.node_id.clone(),
            hostname: info.hello.hostname.clone(),
            labels: info.hello.labels.clone(),
            transport: self.session.transport().as_str().to_owned(),
            daemon_error: FleetFacts::daemon_error(
                info.docker.reachable,
                info.docker.error.as_ref(),
            ),
            writable: FleetFacts::writable(&info.hello.policy),
        }
    }

    /// The node as `/v1/nodes` shows it.
    pub fn view(&self, relay_id: &RelayId) -> NodeView {
        let info = self.lock();
        NodeView {
            node_id: info.hello.node_id.clone(),
            hostname: info.hello.hostname.clone(),
            docker_version: info.docker.version.clone(),
            docker_api_version: info.docker.api_version.clone(),
            daemon_reachable: info.docker.reachable,
            daemon_error: info.docker.error.clone(),
            transport: self.session.transport().as_str().to_owned(),
            connected_since: humantime::format_rfc3339_seconds(info.connected_since).to_string(),
            rtt_ms: info.rtt.map(|d| d.as_secs_f64() * 1000.0),
            agent_version: info.hello.agent_version.clone(),
            labels: info.hello.labels.clone(),
            relay_id: relay_id.clone(),
            policy: info.hello.policy.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnelgate_session::tcp::{MuxSession, Side};

    fn session() -> Session {
        let (io, _other_end) = tokio::io::duplex(1024);
        let addr = "127.0.0.1:1".parse().unwrap();
        Session::from_mux(MuxSession::spawn(io, Side::Server, addr, None))
    }

    fn info() -> NodeInfo {
        let hello: Hello = serde_json::from_value(serde_json::json!({
            "version": {"major": 1, "minor": 0},
            "node_id": "web-1",
        }))
        .unwrap();
        NodeInfo {
            hello,
            docker: DockerFacts::default(),
            connected_since: SystemTime::now(),
            rtt: None,
        }
    }

    fn insert(sessions: &Sessions, key: &NodeKey) -> Arc<Entry> {
        let (control, _) = mpsc::channel(1);
        sessions.insert(session(), key.clone(), "01".into(), info(), control)
    }

    #[tokio::test]
    async fn a_node_falls_back_to_its_older_session_when_the_newer_ends_first() {
        let sessions = Sessions::default();
        let key = NodeKey {
            tenant: TenantId::new("default").unwrap(),
            node_id: NodeId::new("web-1").unwrap(),
        };
        let before = sessions.generation();
        let older = insert(&sessions, &key);
        assert_ne!(sessions.generation(), before, "a node came: a change");
        let newer = insert(&sessions, &key);
        assert_eq!(
            sessions.get(&key).unwrap().id,
            newer.id,
            "calls go to the newer"
        );
        assert_eq!(sessions.entries().len(), 2);

        match sessions.remove(&newer) {
            Removed::Fallback(e) => assert_eq!(e.id, older.id),
            other => panic!("removing the current session gave {other:?}"),
        }
        assert_eq!(
            sessions.get(&key).unwrap().id,
            older.id,
            "the node stays here"
        );
        let before = sessions.generation();
        assert!(matches!(sessions.remove(&older), Removed::Last));
        assert!(sessions.get(&key).is_none());
        assert_ne!(sessions.generation(), before, "a node went: a change");
        assert!(sessions.is_empty());

        // The usual order: the older (dead) one ends after the newer came.
        let older = insert(&sessions, &key);
        let newer = insert(&sessions, &key);
        assert!(matches!(sessions.remove(&older), Removed::NotCurrent));
        assert_eq!(sessions.get(&key).unwrap().id, newer.id);
        assert!(
            matches!(sessions.remove(&older), Removed::NotCurrent),
            "twice is harmless"
        );
    }
}
