//! The cluster's registry: which relays are members, and which relay
//! holds a session of which node.
//!
//! `--registry memory` (the default) is one relay on its own: it is its
//! only member and every node it knows is in its own session table.
//! `--registry etcd://...` shares both tables between relays through etcd
//! ([`etcd`]): each relay keeps a lease, a membership key under it, and a
//! location key per session it holds, fenced by the session's epoch so a
//! stale entry never overwrites a newer session's. Every relay mirrors
//! the registry by watch, and answers from its mirror: the router never
//! waits for etcd, and while etcd is away the last-known routes stand.
//!
//! This module knows nothing of sessions, HTTP or peers' connections: it
//! keeps names and addresses.

pub mod etcd;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::{NodeKey, RelayId};

/// A relay as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The relay's stable name.
    pub relay_id: RelayId,
    /// Where other relays reach its peer port (`host:port`).
    pub peer_addr: String,
    /// Where agents reach it (`host:port`).
    pub agent_addr: String,
    /// Where control-plane clients reach it (`host:port`).
    pub api_addr: String,
    /// When this relay process started, in ms since the epoch: a
    /// restarted relay is a new generation.
    pub generation: u64,
    /// Whether it is shutting down (it still serves what it holds).
    #[serde(default)]
    pub draining: bool,
}

/// Which relay holds a node's session, and which session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The holder.
    pub relay_id: RelayId,
    /// The session's epoch: when it was established, in ns since the
    /// epoch. Of two claims the newer wins.
    pub epoch: u64,
}

/// The registry as this relay last saw it.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    members: HashMap<RelayId, Member>,
    locations: HashMap<NodeKey, Location>,
}

impl Mirror {
    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.locations.clear();
    }

    pub(crate) fn set_member(&mut self, member: Member) {
        self.members.insert(member.relay_id.clone(), member);
    }

    pub(crate) fn remove_member(&mut self, relay_id: &RelayId) {
        self.members.remove(relay_id);
    }

    /// Records a claim; an older epoch than the one known loses.
    pub(crate) fn set_location(&mut self, key: NodeKey, location: Location) {
        match self.locations.get(&key) {
            Some(known) if known.epoch > location.epoch => {}
            _ => {
                self.locations.insert(key, location);
            }
        }
    }

    pub(crate) fn remove_location(&mut self, key: &NodeKey) {
        self.locations.remove(key);
    }
}

/// The cluster's registry, as one relay uses it.
#[derive(Debug)]
pub struct Registry {
    me: RelayId,
    mirror: Arc<RwLock<Mirror>>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Memory,
    Etcd(Box<etcd::Etcd>),
}

impl Registry {
    /// One relay on its own.
    pub fn memory(me: Member) -> Self {
        let mut mirror = Mirror::default();
        let relay_id = me.relay_id.clone();
        mirror.set_member(me);
        Self {
            me: relay_id,
            mirror: Arc::new(RwLock::new(mirror)),
            backend: Backend::Memory,
        }
    }

    /// A registry in etcd at `endpoints`, with `me` as a member under a
    /// lease of `lease_ttl`. Fails, naming the endpoints, when etcd cannot
    /// be reached at all: a relay in cluster mode serves nothing it cannot
    /// vouch for.
    pub async fn etcd(
        endpoints: Vec<String>,
        me: Member,
        lease_ttl: std::time::Duration,
    ) -> Result<Self, etcd::EtcdError> {
        let mirror: Arc<RwLock<Mirror>> = Arc::default();
        let relay_id = me.relay_id.clone();
        let backend = etcd::Etcd::connect(endpoints, me, lease_ttl, mirror.clone()).await?;
        Ok(Self {
            me: relay_id,
            mirror,
            backend: Backend::Etcd(Box::new(backend)),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The members, sorted by relay id.
    pub fn members(&self) -> Vec<Member> {
        let mut members: Vec<_> = self.read().members.values().cloned().collect();
        members.sort_by(|a, b| a.relay_id.cmp(&b.relay_id));
        members
    }

    /// The other relay that holds a session of `key`, if the registry
    /// says one does. A claim by a relay that is not a member is ignored.
    pub fn peer_holding(&self, key: &NodeKey) -> Option<Member> {
        let mirror = self.read();
        let location = mirror.locations.get(key)?;
        if location.relay_id == self.me {
            return None;
        }
        mirror.members.get(&location.relay_id).cloned()
    }

    /// Tells the cluster this relay holds a session of `key` since
    /// `epoch`. Returns at once; the write goes out in the background and
    /// again whenever the relay registers anew.
    pub fn publish(&self, key: &NodeKey, epoch: u64) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.publish(key.clone(), epoch);
        }
    }

    /// Withdraws this relay's claim on `key`, if it is still `epoch`'s.
    pub fn withdraw(&self, key: &NodeKey, epoch: u64) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.withdraw(key.clone(), epoch);
        }
    }

    /// Marks this relay draining, for peers and agents to see.
    pub fn set_draining(&self) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.set_draining();
        }
    }

    /// Keeps the registry current until `stop`, then leaves the cluster
    /// (revokes the lease, so this relay's entries go at once).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        match &self.backend {
            Backend::Memory => stop.cancelled().await,
            Backend::Etcd(etcd) => etcd.run(stop).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            relay_id: RelayId::new(id).unwrap(),
            peer_addr: "127.0.0.1:1".into(),
            agent_addr: "127.0.0.1:2".into(),
            api_addr: "127.0.0.1:3".into(),
            generation: 1,
            draining: false,
        }
    }

    #[test]
    fn a_newer_claim_wins_and_non_members_are_ignored() {
        let registry = Registry::memory(member("a"));
        let key = NodeKey::parse("acme/web").unwrap();
        let at = |id: &str, epoch| Location {
            relay_id: RelayId::new(id).unwrap(),
            epoch,
        };
        registry.write().set_location(key.clone(), at("b", 10));
        assert_eq!(registry.peer_holding(&key), None, "b is not a member");
        registry.write().set_member(member("b"));
        assert_eq!(registry.peer_holding(&key).unwrap().relay_id.as_str(), "b");
        registry.write().set_location(key.clone(), at("c", 5));
        assert_eq!(
            registry.peer_holding(&key).unwrap().relay_id.as_str(),
            "b",
            "an older epoch loses"
        );
        registry.write().set_location(key.clone(), at("a", 11));
        assert_eq!(registry.peer_holding(&key), None, "this relay holds it now");
        assert_eq!(registry.members().len(), 2);
    }
}
