//! The registry in etcd.
//!
//! ```text
//! /tunnelgate/v1/relays/<relay-id>                    Member (JSON), under the relay's lease
//! /tunnelgate/v1/nodes/<tenant>/<node-id>/<relay-id>  "<epoch, 20 digits>", under that relay's lease
//! /tunnelgate/v1/direct/<tenant>/<node-id>/<relay-id> DirectAd (JSON), under that relay's lease
//! /tunnelgate/v1/facts/<tenant>/<node-id>/<relay-id>  the node as /v1/nodes shows it (JSON), likewise
//! ```
//!
//! An agent keeps sessions to several relays, so a node has a key per
//! holder. Each is written in one transaction that keeps a newer claim:
//! `if value > mine then nothing else put` (etcd compares values bytewise
//! and the epoch is zero-padded; a missing key fails the compare, so it
//! is written). A relay process that lost its lease while its agent
//! reconnected to the relay's successor can therefore never overwrite the
//! newer session's entry, and its own entries vanish with the lease.
//!
//! One task owns the connection: it keeps the lease alive, applies this
//! relay's writes in order, and mirrors the prefix by watch. On any
//! failure it starts over (a new lease, this relay's entries written
//! again, the prefix listed again and watched from the listed revision),
//! while the mirror keeps serving what it last saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use tunnelgate_proto::{NodeId, NodeKey, RelayId, TenantId};

use super::{DirectAd, Location, Member, Mirror};

const RELAYS: &str = "/tunnelgate/v1/relays/";
const NODES: &str = "/tunnelgate/v1/nodes/";
const DIRECT: &str = "/tunnelgate/v1/direct/";
const FACTS: &str = "/tunnelgate/v1/facts/";

/// What a holder shares of each node it holds, one key per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Shared {
    /// Its direct path ([`DirectAd`]).
    Direct,
    /// Its facts: hostname, labels, versions, daemon health.
    Facts,
}

impl Shared {
    fn prefix(self) -> &'static str {
        match self {
            Self::Direct => DIRECT,
            Self::Facts => FACTS,
        }
    }
}

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause between attempts to reach etcd again.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// etcd did not answer at all.
    #[error(
        "cannot reach etcd at {endpoints}: {source}; check --registry and that etcd runs there"
    )]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        source: etcd_client::Error,
    },
}

/// A write this relay wants in the registry.
#[derive(Debug)]
enum Op {
    Publish(NodeKey, u64),
    Withdraw(NodeKey, u64),
    Share(Shared, NodeKey, Option<String>),
    Draining,
}

/// The etcd backend of a [`super::Registry`].
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    lease_ttl: Duration,
    me: Mutex<Member>,
    /// This relay's claims, written again after every new lease.
    claims: Mutex<HashMap<NodeKey, u64>>,
    /// What this relay shares of its nodes (JSON), likewise.
    shared: Mutex<HashMap<(Shared, NodeKey), String>>,
    ops: mpsc::UnboundedSender<Op>,
    ops_rx: Mutex<Option<mpsc::UnboundedReceiver<Op>>>,
    mirror: Arc<RwLock<Mirror>>,
}

fn node_key_path(key: &NodeKey, holder: &RelayId) -> String {
    format!("{NODES}{}/{}/{holder}", key.tenant, key.node_id)
}

fn shared_key_path(kind: Shared, key: &NodeKey, holder: &RelayId) -> String {
    format!("{}{}/{}/{holder}", kind.prefix(), key.tenant, key.node_id)
}

fn location_value(epoch: u64) -> String {
    format!("{epoch:020}")
}

/// The node and holder a location (or direct-path) key under `prefix` is of.
fn parse_node_path(prefix: &str, key: &str) -> Option<(NodeKey, RelayId)> {
    let mut parts = key.strip_prefix(prefix)?.split('/');
    let (tenant, node, relay) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((
        NodeKey {
            tenant: TenantId::new(tenant).ok()?,
            node_id: NodeId::new(node).ok()?,
        },
        RelayId::new(relay).ok()?,
    ))
}

fn parse_location(key: &str, value: &str) -> Option<(NodeKey, Location)> {
    let (node, relay_id) = parse_node_path(NODES, key)?;
    Some((
        node,
        Location {
            relay_id,
            epoch: value.parse().ok()?,
        },
    ))
}

/// Applies one key's new value (or its removal) to the mirror; keys that
/// do not parse are ignored, and logged once at debug.
fn apply(mirror: &mut Mirror, key: &str, value: Option<&str>) {
    if let Some(id) = key.strip_prefix(RELAYS) {
        let Ok(relay_id) = RelayId::new(id) else {
            return debug!(key, "ignoring a relay key that is no relay id");
        };
        match value.map(serde_json::from_str::<Member>) {
            Some(Ok(member)) => mirror.set_member(member),
            Some(Err(e)) => debug!(key, error = %e, "ignoring an unreadable member"),
            None => mirror.remove_member(&relay_id),
        }
    } else if key.starts_with(NODES) {
        match value {
            Some(v) => match parse_location(key, v) {
                Some((node, location)) => mirror.set_location(node, location),
                None => debug!(key, "ignoring an unreadable location"),
            },
            None => {
                if let Some((node, relay_id)) = parse_node_path(NODES, key) {
                    mirror.remove_location(&node, &relay_id);
                }
            }
        }
    } else if let Some((node, relay_id)) = parse_node_path(DIRECT, key) {
        match value.map(serde_json::from_str::<DirectAd>) {
            Some(Ok(ad)) => mirror.set_direct(node, relay_id, ad),
            Some(Err(e)) => {
                debug!(key, error = %e, "ignoring an unreadable direct-path advertisement")
            }
            None => mirror.remove_direct(&node, &relay_id),
        }
    } else if let Some((node, relay_id)) = parse_node_path(FACTS, key) {
        match value {
            Some(v) if serde_json::from_str::<serde::de::IgnoredAny>(v).is_ok() => {
                mirror.set_facts(node, relay_id, Arc::from(v));
            }
            Some(_) => debug!(key, "ignoring an unreadable node record"),
            None => mirror.remove_facts(&node, &relay_id),
        }
    }
}

impl Etcd {
    /// Reaches etcd once, so a relay that never can refuses to start.
    pub(super) async fn connect(
        endpoints: Vec<String>,
        me: Member,
        lease_ttl: Duration,
        mirror: Arc<RwLock<Mirror>>,
    ) -> Result<Self, EtcdError> {
        let client = Self::client(&endpoints)
            .await
            .map_err(|source| EtcdError::Unreachable {
                endpoints: endpoints.join(","),
                source,
            })?;
        drop(client);
        let (ops, ops_rx) = mpsc::unbounded_channel();
        Ok(Self {
            endpoints,
            lease_ttl,
            me: Mutex::new(me),
            claims: Mutex::default(),
            shared: Mutex::default(),
            ops,
            ops_rx: Mutex::new(Some(ops_rx)),
            mirror,
        })
    }

    async fn client(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let mut client = Client::connect(endpoints, Some(options)).await?;
        // connect() is lazy about the network: ask something to know.
        client
            .get(RELAYS, Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(client)
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn publish(&self, key: NodeKey, epoch: u64) {
        Self::lock(&self.claims).insert(key.clone(), epoch);
        let _ = self.ops.send(Op::Publish(key, epoch));
    }

    pub(super) fn withdraw(&self, key: NodeKey, epoch: u64) {
        {
            let mut claims = Self::lock(&self.claims);
            if claims.get(&key) == Some(&epoch) {
                claims.remove(&key);
            }
        }
        let _ = self.ops.send(Op::Withdraw(key, epoch));
    }

    /// Makes what this relay shares of `kind` `own`, writing only what
    /// changed; a node no longer in `own` is withdrawn.
    pub(super) fn share(&self, kind: Shared, own: HashMap<NodeKey, String>) {
        let mut shared = Self::lock(&self.shared);
        shared.retain(|(k, key), _| {
            let keep = *k != kind || own.contains_key(key);
            if !keep {
                let _ = self.ops.send(Op::Share(kind, key.clone(), None));
            }
            keep
        });
        for (key, json) in own {
            let known = shared.entry((kind, key.clone())).or_default();
            if *known != json {
                known.clone_from(&json);
                let _ = self.ops.send(Op::Share(kind, key, Some(json)));
            }
        }
    }

    pub(super) fn set_draining(&self) {
        Self::lock(&self.me).draining = true;
        let _ = self.ops.send(Op::Draining);
    }

    fn relay_id(&self) -> RelayId {
        Self::lock(&self.me).relay_id.clone()
    }

    /// Keeps this relay registered and the mirror current until `stop`;
    /// then revokes the lease.
    pub(super) async fn run(&self, stop: CancellationToken) {
        let Some(mut ops) = Self::lock(&self.ops_rx).take() else {
            return warn!("the registry task was started twice");
        };
        let mut pause = Duration::from_millis(200);
        loop {
            match self.session(&mut ops, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, endpoints = %self.endpoints.join(","), retry_in = ?pause,
                          "etcd unreachable; serving this relay's sessions and the last-known routes meanwhile");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// One connection's life: register, list, then keep alive, write and
    /// watch until something fails (an error) or `stop` (the lease is
    /// revoked, `Ok`).
    async fn session(
        &self,
        ops: &mut mpsc::UnboundedReceiver<Op>,
        stop: &CancellationToken,
    ) -> Result<(), etcd_client::Error> {
        let connected = tokio::select! {
            c = Self::client(&self.endpoints) => c?,
            // Not registered yet: nothing to revoke.
            () = stop.cancelled() => return Ok(()),
        };
        let mut client = connected;
        let ttl = self.lease_ttl.as_secs().max(1) as i64;
        let lease = client.lease_grant(ttl, None).await?.id();
        let (mut keeper, mut keep_alive) = client.lease_keep_alive(lease).await?;
        // Drop the writes queued so far, then write this relay's state as
        // it stands: each write changes that state before it is queued, so
        // what is written covers every dropped one, and any queued after
        // is applied below in order. (Copying first lost a claim made
        // between the copy and the drop.)
        while ops.try_recv().is_ok() {}
        self.put_member(&mut client, lease).await?;
        let claims: Vec<_> = Self::lock(&self.claims)
            .iter()
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        for (key, epoch) in claims {
            self.put_location(&mut client, lease, &key, epoch).await?;
        }
        let shared: Vec<_> = Self::lock(&self.shared)
            .iter()
            .map(|((kind, key), json)| (*kind, key.clone(), json.clone()))
            .collect();
        for (kind, key, json) in shared {
            self.put_shared(&mut client, lease, kind, &key, Some(json))
                .await?;
        }
        // Members and locations only: the records under the same root have
        // a watch of their own (the state's), and would be sent twice.
        let relays = client
            .get(RELAYS, Some(GetOptions::new().with_prefix()))
            .await?;
        let nodes = client
            .get(NODES, Some(GetOptions::new().with_prefix()))
            .await?;
        let directs = client
            .get(DIRECT, Some(GetOptions::new().with_prefix()))
            .await?;
        let facts = client
            .get(FACTS, Some(GetOptions::new().with_prefix()))
            .await?;
        let revision_of = |r: &etcd_client::GetResponse| r.header().map_or(0, |h| h.revision());
        let revision = revision_of(&relays)
            .max(revision_of(&nodes))
            .max(revision_of(&directs))
            .max(revision_of(&facts));
        {
            let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
            mirror.clear();
            let all = relays.kvs().iter().chain(nodes.kvs()).chain(directs.kvs());
            for kv in all.chain(facts.kvs()) {
                if let (Ok(k), Ok(v)) = (kv.key_str(), kv.value_str()) {
                    apply(&mut mirror, k, Some(v));
                }
            }
            mirror.mark_synced();
        }
        let from = |r: &etcd_client::GetResponse| {
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision_of(r) + 1)
        };
        let mut watch = client.watch(RELAYS, Some(from(&relays))).await?;
        watch.watch(NODES, Some(from(&nodes))).await?;
        watch.watch(DIRECT, Some(from(&directs))).await?;
        watch.watch(FACTS, Some(from(&facts))).await?;
        info!(relay_id = %self.relay_id(), lease, revision, "registered in etcd");
        let mut tick = tokio::time::interval(self.lease_ttl / 3);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    keeper.keep_alive().await?;
                    match tokio::time::timeout(REQUEST_TIMEOUT, keep_alive.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        Ok(Err(e)) => return Err(e),
                        // An expired lease: its keys are gone; start over.
                        _ => return Err(etcd_client::Error::LeaseKeepAliveError(
                            "the lease expired; registering again".into(),
                        )),
                    }
                }
                op = ops.recv() => match op {
                    Some(Op::Publish(key, epoch)) => self.put_location(&mut client, lease, &key, epoch).await?,
                    Some(Op::Withdraw(key, epoch)) => self.delete_location(&mut client, &key, epoch).await?,
                    Some(Op::Share(kind, key, json)) => self.put_shared(&mut client, lease, kind, &key, json).await?,
                    Some(Op::Draining) => self.put_member(&mut client, lease).await?,
                    None => return Ok(()),
                },
                msg = watch.message() => {
                    let Some(resp) = msg? else {
                        return Err(etcd_client::Error::WatchError("the watch ended".into()));
                    };
                    if resp.canceled() || resp.compact_revision() > 0 {
                        // Compacted past what we saw: list again.
                        return Err(etcd_client::Error::WatchError(format!(
                            "the watch was cancelled ({}); listing again",
                            resp.cancel_reason()
                        )));
                    }
                    let mut mirror = self.mirror.write().unwrap_or_else(|p| p.into_inner());
                    for event in resp.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        match event.event_type() {
                            EventType::Put => apply(&mut mirror, key, kv.value_str().ok()),
                            EventType::Delete => apply(&mut mirror, key, None),
                        }
                    }
                }
                () = stop.cancelled() => {
                    let _ = client.lease_revoke(lease).await;
                    info!("left the cluster: lease revoked");
                    return Ok(());
                }
            }
        }
    }

    async fn put_member(&self, client: &mut Client, lease: i64) -> Result<(), etcd_client::Error> {
        let me = Self::lock(&self.me).clone();
        let json = serde_json::to_string(&me).expect("a member serializes");
        client
            .put(
                format!("{RELAYS}{}", me.relay_id),
                json,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        Ok(())
    }

    /// Writes this relay's claim on `key` unless a newer one stands.
    async fn put_location(
        &self,
        client: &mut Client,
        lease: i64,
        key: &NodeKey,
        epoch: u64,
    ) -> Result<(), etcd_client::Error> {
        let path = node_key_path(key, &self.relay_id());
        let mine = location_value(epoch);
        let txn = Txn::new()
            .when([Compare::value(
                path.clone(),
                CompareOp::Greater,
                mine.clone(),
            )])
            .or_else([TxnOp::put(
                path,
                mine,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if client.txn(txn).await?.succeeded() {
            debug!(node = %key, "a newer session of the node on this relay is registered; not claiming it");
        }
        Ok(())
    }

    /// Writes (or, for `None`, removes) what this relay shares of `key`.
    /// Unfenced: it lives under this relay's lease and is read only with
    /// a location of the same relay; a stale direct path can only send
    /// probes to an endpoint, where the daemon's certificate and ID decide.
    async fn put_shared(
        &self,
        client: &mut Client,
        lease: i64,
        kind: Shared,
        key: &NodeKey,
        json: Option<String>,
    ) -> Result<(), etcd_client::Error> {
        let path = shared_key_path(kind, key, &self.relay_id());
        match json {
            Some(json) => {
                client
                    .put(path, json, Some(PutOptions::new().with_lease(lease)))
                    .await?;
            }
            None => {
                client.delete(path, None).await?;
            }
        }
        Ok(())
    }

    /// Removes this relay's claim on `key` if it is still `epoch`'s.
    async fn delete_location(
        &self,
        client: &mut Client,
        key: &NodeKey,
        epoch: u64,
    ) -> Result<(), etcd_client::Error> {
        let path = node_key_path(key, &self.relay_id());
        let mine = location_value(epoch);
        let txn = Txn::new()
            .when([Compare::value(path.clone(), CompareOp::Equal, mine)])
            .and_then([TxnOp::delete(path, None)]);
        client.txn(txn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_compare_by_epoch_and_parse_back() {
        let (a, b) = (location_value(9), location_value(10));
        assert!(b > a, "bytewise order follows the epoch");
        let key = NodeKey::parse("acme/web-1").unwrap();
        let relay = RelayId::new("relay-a").unwrap();
        let (k, l) = parse_location(&node_key_path(&key, &relay), &b).unwrap();
        assert_eq!((k, l.epoch, l.relay_id.as_str()), (key, 10, "relay-a"));
        assert!(parse_location("/tunnelgate/v1/nodes/acme/web-1", &b).is_none());
        assert!(parse_location("/tunnelgate/v1/nodes/acme/web-1/r/x", &b).is_none());
        let other = NodeKey::parse("a/b").unwrap();
        assert!(parse_location(&node_key_path(&other, &relay), "junk").is_none());
    }

    #[test]
    fn the_mirror_follows_puts_and_deletes_and_ignores_junk() {
        let mut mirror = Mirror::default();
        let member = Member {
            relay_id: RelayId::new("relay-b").unwrap(),
            peer_addr: "127.0.0.1:7444".into(),
            agent_addr: "127.0.0.1:7443".into(),
            api_addr: "127.0.0.1:7375".into(),
            generation: 1,
            draining: false,
        };
        let json = serde_json::to_string(&member).unwrap();
        apply(&mut mirror, "/tunnelgate/v1/relays/relay-b", Some(&json));
        apply(
            &mut mirror,
            "/tunnelgate/v1/relays/relay-c",
            Some("not json"),
        );
        apply(&mut mirror, "/tunnelgate/v1/relays/../x", Some(&json));
        assert_eq!(mirror.members.len(), 1);
        let path = node_key_path(&NodeKey::parse("acme/web").unwrap(), &member.relay_id);
        apply(&mut mirror, &path, Some(&location_value(5)));
        assert_eq!(mirror.locations.len(), 1);
        apply(&mut mirror, &path, None);
        apply(&mut mirror, "/tunnelgate/v1/relays/relay-b", None);
        assert!(mirror.locations.is_empty() && mirror.members.is_empty());
    }

    #[test]
    fn direct_path_keys_fill_and_empty_the_mirror() {
        let mut mirror = Mirror::default();
        let path = "/tunnelgate/v1/direct/acme/web/relay-b";
        let json = r#"{"endpoints":["tcp://10.0.0.7:2376"],"daemon_id":"ABCD"}"#;
        apply(&mut mirror, path, Some(json));
        let key = NodeKey::parse("acme/web").unwrap();
        let b = RelayId::new("relay-b").unwrap();
        assert_eq!(mirror.directs[&key][&b].daemon_id, "ABCD");
        apply(&mut mirror, path, Some("not json"));
        assert_eq!(
            mirror.directs[&key][&b].daemon_id, "ABCD",
            "garbage is ignored"
        );
        apply(&mut mirror, path, None);
        assert!(mirror.directs.is_empty());
        apply(&mut mirror, "/tunnelgate/v1/direct/acme/web", Some(json));
        assert!(mirror.directs.is_empty(), "a short key is ignored");
    }

    #[test]
    fn node_facts_fill_and_empty_the_mirror() {
        let mut mirror = Mirror::default();
        let path = "/tunnelgate/v1/facts/acme/web/relay-b";
        apply(&mut mirror, path, Some(r#"{"hostname":"web-1"}"#));
        let key = NodeKey::parse("acme/web").unwrap();
        let b = RelayId::new("relay-b").unwrap();
        assert_eq!(&*mirror.facts[&key][&b], r#"{"hostname":"web-1"}"#);
        apply(&mut mirror, path, Some("{not json"));
        assert_eq!(&*mirror.facts[&key][&b], r#"{"hostname":"web-1"}"#);
        apply(&mut mirror, path, None);
        assert!(mirror.facts.is_empty());
    }
}
