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
//! Holders also share what their agents advertise of a direct path (the
//! node's daemon endpoints and daemon ID, [`DirectAd`]), so every relay
//! can probe a node's daemon on its own and go direct to a node it holds
//! no session of; and each node's facts as `/v1/nodes` shows them
//! (hostname, labels, versions, daemon health), kept as the holder's JSON
//! text, so every relay can list and place onto the nodes its peers hold.
//!
//! This module knows nothing of sessions, HTTP or peers' connections: it
//! keeps names and addresses.

pub mod etcd;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::{NodeId, NodeKey, RelayId, TenantId};

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

/// What a node's agent advertised of its daemon's own port, as the relay
/// holding its session shares it: the endpoints to probe and the daemon
/// ID a probe must find there. Only agents whose policy lets every call
/// through advertise one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectAd {
    /// `tcp://host:port` endpoints, as the agent gave them.
    pub endpoints: Vec<String>,
    /// The daemon ID the agent reports.
    pub daemon_id: String,
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
    /// Each node's holders: an agent keeps sessions to several relays.
    locations: HashMap<NodeKey, Vec<Location>>,
    /// What each holder shares of a node's direct path.
    directs: HashMap<NodeKey, HashMap<RelayId, DirectAd>>,
    /// Each holder's record of a node's facts (JSON).
    facts: HashMap<NodeKey, HashMap<RelayId, Arc<str>>>,
    /// Bumped on every membership change, for [`Registry::membership`].
    changed: Option<tokio::sync::watch::Sender<u64>>,
    /// Bumped whenever which relay holds which node may have changed
    /// (a claim, a withdrawal, a member come or gone), so a caller can
    /// tell cheaply that [`Registry::held_by_peers`] still answers alike.
    holders_changed: u64,
    /// Whether the mirror was ever filled from the registry.
    synced: bool,
}

impl Mirror {
    fn with_watch() -> Self {
        Self {
            changed: Some(tokio::sync::watch::channel(0).0),
            ..Self::default()
        }
    }

    fn bump(&self) {
        if let Some(tx) = &self.changed {
            tx.send_modify(|v| *v += 1);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.locations.clear();
        self.directs.clear();
        self.facts.clear();
        self.holders_changed += 1;
        self.bump();
    }

    /// The mirror now holds a full listing of the registry.
    pub(crate) fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            self.bump();
        }
    }

    pub(crate) fn set_member(&mut self, member: Member) {
        if self.members.get(&member.relay_id) != Some(&member) {
            self.members.insert(member.relay_id.clone(), member);
            self.holders_changed += 1;
            self.bump();
        }
    }

    pub(crate) fn remove_member(&mut self, relay_id: &RelayId) {
        if self.members.remove(relay_id).is_some() {
            self.holders_changed += 1;
            self.bump();
        }
    }

    /// Records a relay's claim on a node; an older epoch than the one
    /// known from that relay loses. Holders stay sorted newest first.
    pub(crate) fn set_location(&mut self, key: NodeKey, location: Location) {
        let holders = self.locations.entry(key).or_default();
        match holders.iter_mut().find(|l| l.relay_id == location.relay_id) {
            Some(known) if known.epoch > location.epoch => return,
            Some(known) => *known = location,
            None => holders.push(location),
        }
        holders.sort_by_key(|l| std::cmp::Reverse(l.epoch));
        self.holders_changed += 1;
    }

    pub(crate) fn set_direct(&mut self, key: NodeKey, relay_id: RelayId, ad: DirectAd) {
        self.directs.entry(key).or_default().insert(relay_id, ad);
    }

    pub(crate) fn remove_direct(&mut self, key: &NodeKey, relay_id: &RelayId) {
        if let Some(ads) = self.directs.get_mut(key) {
            ads.remove(relay_id);
            if ads.is_empty() {
                self.directs.remove(key);
            }
        }
    }

    pub(crate) fn set_facts(&mut self, key: NodeKey, relay_id: RelayId, json: Arc<str>) {
        self.facts.entry(key).or_default().insert(relay_id, json);
    }

    pub(crate) fn remove_facts(&mut self, key: &NodeKey, relay_id: &RelayId) {
        if let Some(records) = self.facts.get_mut(key) {
            records.remove(relay_id);
            if records.is_empty() {
                self.facts.remove(key);
            }
        }
    }

    pub(crate) fn remove_location(&mut self, key: &NodeKey, relay_id: &RelayId) {
        if let Some(holders) = self.locations.get_mut(key) {
            self.holders_changed += 1;
            holders.retain(|l| &l.relay_id != relay_id);
            if holders.is_empty() {
                self.locations.remove(key);
            }
        }
    }
}

/// The cluster's registry, as one relay uses it.
#[derive(Debug)]
pub struct Registry {
    me: RelayId,
    mirror: Arc<RwLock<Mirror>>,
    backend: Backend,
    /// Set when this relay starts draining, before etcd has echoed it.
    leaving: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
enum Backend {
    Memory,
    Etcd(Box<etcd::Etcd>),
}

impl Registry {
    /// One relay on its own.
    pub fn memory(me: Member) -> Self {
        let mut mirror = Mirror::with_watch();
        let relay_id = me.relay_id.clone();
        mirror.set_member(me);
        mirror.mark_synced();
        Self {
            me: relay_id,
            mirror: Arc::new(RwLock::new(mirror)),
            backend: Backend::Memory,
            leaving: Default::default(),
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
        let mirror = Arc::new(RwLock::new(Mirror::with_watch()));
        let relay_id = me.relay_id.clone();
        let backend = etcd::Etcd::connect(endpoints, me, lease_ttl, mirror.clone()).await?;
        Ok(Self {
            me: relay_id,
            mirror,
            backend: Backend::Etcd(Box::new(backend)),
            leaving: Default::default(),
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

    /// Resolves once the mirror has been filled from the registry: before
    /// that a relay would call nodes that peers hold offline, so it is not
    /// ready.
    pub async fn synced(&self) {
        let mut changes = self.membership();
        while !self.read().synced {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Fires whenever a relay joins, leaves or starts draining.
    pub fn membership(&self) -> tokio::sync::watch::Receiver<u64> {
        self.read()
            .changed
            .as_ref()
            .expect("a registry's mirror has a watch")
            .subscribe()
    }

    /// The membership as agents are told it; a draining relay is marked
    /// so the moment it starts, whatever etcd has echoed yet.
    pub fn agent_view(&self) -> Vec<tunnelgate_proto::message::RelayMember> {
        let leaving = self.leaving.load(std::sync::atomic::Ordering::Acquire);
        self.members()
            .into_iter()
            .map(|m| tunnelgate_proto::message::RelayMember {
                draining: m.draining || (leaving && m.relay_id == self.me),
                relay_id: m.relay_id,
                agent_addr: m.agent_addr,
            })
            .collect()
    }

    /// The other relays that hold a session of `key`, the newest session
    /// first. A claim by a relay that is not a member is ignored.
    pub fn peers_holding(&self, key: &NodeKey) -> Vec<Member> {
        let mirror = self.read();
        let Some(holders) = mirror.locations.get(key) else {
            return Vec::new();
        };
        holders
            .iter()
            .filter(|l| l.relay_id != self.me)
            .filter_map(|l| mirror.members.get(&l.relay_id).cloned())
            .collect()
    }

    /// The tenant's nodes that another relay holds a session of, each
    /// with the relay [`Registry::peers_holding`] would put first.
    pub fn held_by_peers(&self, tenant: &TenantId) -> Vec<(NodeId, RelayId)> {
        let mirror = self.read();
        mirror
            .locations
            .iter()
            .filter(|(key, _)| &key.tenant == tenant)
            .filter_map(|(key, holders)| {
                let first = holders
                    .iter()
                    .find(|l| l.relay_id != self.me && mirror.members.contains_key(&l.relay_id))?;
                Some((key.node_id.clone(), first.relay_id.clone()))
            })
            .collect()
    }

    /// A number that changes whenever [`Registry::held_by_peers`] may
    /// answer differently.
    pub fn holders_generation(&self) -> u64 {
        self.read().holders_changed
    }

    /// Tells the cluster this relay holds a session of `key` since
    /// `epoch`. Returns at once; the write goes out in the background and
    /// again whenever the relay registers anew.
    pub fn publish(&self, key: &NodeKey, epoch: u64) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.publish(key.clone(), epoch);
        }
    }

    /// Shares what the agents of the nodes this relay holds advertise of
    /// their direct paths, `own` being all of them now: for the other
    /// relays to probe. Only changes are written, in the background, like
    /// [`Registry::publish`]; a node no longer in `own` is withdrawn.
    pub fn share_direct(&self, own: &HashMap<NodeKey, DirectAd>) {
        if let Backend::Etcd(etcd) = &self.backend {
            let own = own
                .iter()
                .map(|(key, ad)| {
                    let json = serde_json::to_string(ad).expect("an advertisement serializes");
                    (key.clone(), json)
                })
                .collect();
            etcd.share(etcd::Shared::Direct, own);
        }
    }

    /// Whether other relays can read what this one shares (etcd).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    /// Shares the facts of the nodes this relay holds, `own` being all of
    /// them now (each as `/v1/nodes` shows it, in JSON): for the other
    /// relays to list and place onto. Only changes are written.
    pub fn share_facts(&self, own: HashMap<NodeKey, String>) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.share(etcd::Shared::Facts, own);
        }
    }

    /// A node's facts as the newest of its other holders that is a member
    /// shares them (JSON), if one does.
    pub fn peer_facts(&self, key: &NodeKey) -> Option<Arc<str>> {
        let mirror = self.read();
        let records = mirror.facts.get(key)?;
        mirror
            .locations
            .get(key)?
            .iter()
            .filter(|l| l.relay_id != self.me && mirror.members.contains_key(&l.relay_id))
            .find_map(|l| records.get(&l.relay_id).cloned())
    }

    /// The direct paths of nodes that other relays hold and this one may
    /// not: one advertisement per node, from a member.
    pub fn peers_direct_ads(&self) -> Vec<(NodeKey, DirectAd)> {
        let mirror = self.read();
        mirror
            .directs
            .iter()
            .filter_map(|(key, ads)| {
                let (_, ad) = ads
                    .iter()
                    .filter(|(relay, _)| **relay != self.me)
                    .filter(|(relay, _)| mirror.members.contains_key(*relay))
                    .min_by(|a, b| a.0.cmp(b.0))?;
                Some((key.clone(), ad.clone()))
            })
            .collect()
    }

    /// Withdraws this relay's claim on `key`, if it is still `epoch`'s.
    pub fn withdraw(&self, key: &NodeKey, epoch: u64) {
        if let Backend::Etcd(etcd) = &self.backend {
            etcd.withdraw(key.clone(), epoch);
        }
    }

    /// Whether another relay that is not draining is a member: somewhere
    /// for this relay's agents to go.
    pub fn has_other_live_member(&self) -> bool {
        self.read()
            .members
            .values()
            .any(|m| m.relay_id != self.me && !m.draining)
    }

    /// Marks this relay draining, for peers and agents to see.
    pub fn set_draining(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
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
        let holders = |r: &Registry| -> Vec<String> {
            r.peers_holding(&key)
                .iter()
                .map(|m| m.relay_id.to_string())
                .collect()
        };
        // Whenever the holders answer differently, the generation moved.
        let mut seen = (registry.holders_generation(), holders(&registry));
        let mut moved = |r: &Registry| {
            let now = (r.holders_generation(), holders(r));
            assert!(now.1 == seen.1 || now.0 != seen.0, "{now:?} after {seen:?}");
            seen = now;
        };
        let mut changes = registry.membership();
        registry.write().set_location(key.clone(), at("b", 10));
        assert!(holders(&registry).is_empty(), "b is not a member");
        moved(&registry);
        registry.write().set_member(member("b"));
        moved(&registry);
        registry.write().set_member(member("c"));
        assert!(changes.has_changed().unwrap(), "joining is a change");
        assert_eq!(holders(&registry), ["b"]);
        moved(&registry);
        registry.write().set_location(key.clone(), at("c", 12));
        assert_eq!(holders(&registry), ["c", "b"], "newest session first");
        moved(&registry);
        registry.write().set_location(key.clone(), at("c", 5));
        assert_eq!(holders(&registry), ["c", "b"], "an older epoch loses");
        moved(&registry);
        registry.write().set_location(key.clone(), at("a", 13));
        assert_eq!(holders(&registry), ["c", "b"], "this relay is no peer");
        moved(&registry);
        registry
            .write()
            .remove_location(&key, &RelayId::new("c").unwrap());
        assert_eq!(holders(&registry), ["b"]);
        moved(&registry);
        registry.write().remove_member(&RelayId::new("b").unwrap());
        assert!(holders(&registry).is_empty(), "b left");
        moved(&registry);
        registry.write().set_member(member("b"));
        changes.borrow_and_update();
        registry.write().set_member(member("b"));
        assert!(
            !changes.has_changed().unwrap(),
            "the same member again is no change"
        );
        assert_eq!(registry.members().len(), 3);
    }

    #[test]
    fn peers_direct_paths_come_from_members_other_than_this_relay() {
        let registry = Registry::memory(member("a"));
        let key = NodeKey::parse("acme/web").unwrap();
        let ad = |id: &str| DirectAd {
            endpoints: vec!["tcp://10.0.0.7:2376".into()],
            daemon_id: id.into(),
        };
        let id = |s: &str| RelayId::new(s).unwrap();
        let ads = |r: &Registry| -> Vec<String> {
            r.peers_direct_ads()
                .into_iter()
                .map(|(k, ad)| format!("{k} {}", ad.daemon_id))
                .collect()
        };
        registry
            .write()
            .set_direct(key.clone(), id("a"), ad("mine"));
        registry
            .write()
            .set_direct(key.clone(), id("b"), ad("from-b"));
        assert!(
            ads(&registry).is_empty(),
            "b is not a member, a is this relay"
        );
        registry.write().set_member(member("b"));
        assert_eq!(ads(&registry), ["acme/web from-b"]);
        registry.write().remove_direct(&key, &id("b"));
        assert!(ads(&registry).is_empty(), "withdrawn");
        registry
            .write()
            .set_direct(key.clone(), id("b"), ad("again"));
        registry.write().clear();
        assert!(ads(&registry).is_empty(), "a fresh listing forgets them");
    }
}
