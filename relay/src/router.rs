//! The one place that decides where a call goes.
//!
//! The front asks the router for a node's route and an upstream carries
//! the call there: over the node's session on this relay, else through
//! the peer relay the registry says holds one, else nowhere (offline or
//! unknown). A route straight to the node's daemon is a further variant
//! of [`Route`], added here without touching the front. Lookups are in
//! memory only: the session table, the registry's mirror and the state
//! cache.

use std::sync::Arc;

use tunnelgate_proto::NodeKey;

use crate::registry::{Member, Registry};
use crate::sessions::{Entry, Sessions};
use crate::state::{NodeStatus, State};

/// Where a call to a node goes.
#[derive(Debug)]
pub enum Route {
    /// Over the node's session on this relay.
    Local(Arc<Entry>),
    /// Through the peer relay that holds a session of the node.
    Peer(Member),
    /// The node enrolled here but its agent is not connected.
    Offline,
    /// No such node for this tenant (another tenant's node looks the same).
    Unknown,
}

impl Route {
    /// The route's name in logs and the audit line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Local(_) => "local",
            Self::Peer(_) => "peer",
            Self::Offline => "offline",
            Self::Unknown => "unknown",
        }
    }
}

/// Decides routes from the session table and the node records.
#[derive(Debug, Clone)]
pub struct Router {
    sessions: Arc<Sessions>,
    registry: Arc<Registry>,
    state: Arc<State>,
}

impl Router {
    /// A router over these tables.
    pub fn new(sessions: Arc<Sessions>, registry: Arc<Registry>, state: Arc<State>) -> Self {
        Self {
            sessions,
            registry,
            state,
        }
    }

    /// Where a call to `key` goes now. Only the caller's tenant is looked
    /// in, so another tenant's node is simply not there.
    pub fn route(&self, key: &NodeKey) -> Route {
        if let Some(entry) = self.sessions.get(key) {
            return Route::Local(entry);
        }
        if let Some(peer) = self.registry.peer_holding(key) {
            return Route::Peer(peer);
        }
        match self.state.node_status(key) {
            NodeStatus::Enrolled(_) => Route::Offline,
            NodeStatus::Revoked(_) | NodeStatus::Unknown => Route::Unknown,
        }
    }
}
