//! The one place that decides where a call goes.
//!
//! The front asks the router for a node's route and an upstream carries
//! the call there: straight to the node's daemon port while this relay's
//! last probe of it held, else over the node's session on this relay,
//! else through the peer relays the registry says hold one (an agent
//! keeps sessions to several), else nowhere (offline or unknown). Lookups
//! are in memory only: the direct path's probe table, the session table,
//! the registry's mirror and the state cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use tunnelgate_proto::{NodeId, NodeKey, RelayId, TenantId};

use crate::registry::Registry;
use crate::sessions::{NodeView, Sessions};
use crate::state::{NodeStatus, State};
use crate::upstream::{Direct, Via};

/// Where a call to a node goes.
#[derive(Debug)]
pub enum Route {
    /// Over these, best first: the node's daemon port, the node's
    /// session on this relay, then the peer relays that hold one, newest
    /// session first. Never empty.
    Via(Vec<Via>),
    /// The node enrolled here but its agent is not connected.
    Offline,
    /// No such node for this tenant (another tenant's node looks the same).
    Unknown,
}

/// Where a node's session is, for the fleet views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// On this relay.
    Here,
    /// On this peer relay (the newest session's).
    Peer(RelayId),
    /// Nowhere: enrolled, and its agent not connected.
    Nowhere,
}

impl Held {
    /// Whether a call to the node has somewhere to go.
    pub fn is_online(&self) -> bool {
        !matches!(self, Self::Nowhere)
    }
}

/// Decides routes from the session table and the node records.
#[derive(Debug, Clone)]
pub struct Router {
    sessions: Arc<Sessions>,
    registry: Arc<Registry>,
    state: Arc<State>,
    direct: Arc<Direct>,
}

impl Router {
    /// A router over these tables.
    pub fn new(
        sessions: Arc<Sessions>,
        registry: Arc<Registry>,
        state: Arc<State>,
        direct: Arc<Direct>,
    ) -> Self {
        Self {
            sessions,
            registry,
            state,
            direct,
        }
    }

    /// The tenant's nodes, sorted by id, each with where it is held now:
    /// here, on a peer relay, or nowhere (enrolled and offline). For the
    /// views over a whole fleet; in memory only, like [`Router::route`].
    pub fn fleet(&self, tenant: &TenantId) -> Vec<(NodeId, Held)> {
        let mut nodes: BTreeMap<NodeId, Held> = self
            .state
            .enrolled(tenant)
            .into_iter()
            .map(|n| (n, Held::Nowhere))
            .collect();
        for (node, relay) in self.registry.held_by_peers(tenant) {
            nodes.insert(node, Held::Peer(relay));
        }
        for node in self.sessions.node_ids(tenant) {
            nodes.insert(node, Held::Here);
        }
        nodes.into_iter().collect()
    }

    /// The nodes of `tenant` a relay holds a session of now: what a fleet
    /// call looks at on every call, without the facts [`Self::fleet`]'s
    /// callers go on to gather.
    pub fn online(&self, tenant: &TenantId) -> std::collections::HashSet<NodeId> {
        let mut online: std::collections::HashSet<NodeId> =
            self.sessions.node_ids(tenant).into_iter().collect();
        online.extend(
            self.registry
                .held_by_peers(tenant)
                .into_iter()
                .map(|(n, _)| n),
        );
        online
    }

    /// A number that changes whenever [`Self::online`] may answer
    /// differently for some tenant (both counts only grow, so their sum
    /// changes when either does).
    pub fn online_generation(&self) -> u64 {
        self.sessions.generation() + self.registry.holders_generation()
    }

    /// A node a peer holds, as that peer shares it through the registry.
    pub fn peer_view(&self, key: &NodeKey) -> Option<NodeView> {
        let json = self.registry.peer_facts(key)?;
        serde_json::from_str(&json).ok()
    }

    /// Where a call to `key` goes now. Only the caller's tenant is looked
    /// in, so another tenant's node is simply not there.
    pub fn route(&self, key: &NodeKey) -> Route {
        let direct = self.direct.usable(key).map(Via::Direct);
        let local = self.sessions.get(key).map(Via::Session);
        let vias: Vec<Via> = direct
            .into_iter()
            .chain(local)
            .chain(self.registry.peers_holding(key).into_iter().map(Via::Peer))
            .collect();
        if !vias.is_empty() {
            return Route::Via(vias);
        }
        match self.state.node_status(key) {
            NodeStatus::Enrolled(_) => Route::Offline,
            NodeStatus::Revoked(_) | NodeStatus::Unknown => Route::Unknown,
        }
    }
}
