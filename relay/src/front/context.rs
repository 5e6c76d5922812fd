//! What every part of the front works with: the relay's tables and
//! settings ([`Front`]), one client connection ([`ClientConn`]), and the
//! ids a call gets (request id, trace). Kept apart from the dispatcher in
//! `front.rs`, so the front's parts import this and never the module
//! that imports them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::task::TaskTracker;
use tunnelgate_proto::docker_api::stream_notice;
use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::{NodeId, NodeKey, RequestId};

use super::install;
use super::slots::StreamSlots;
use crate::auth::{Credentials, Principal};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::ConnMeta;
use crate::router::{Held, Router};
use crate::sessions::Sessions;
use crate::state::credentials::Kind;
use crate::state::State;
use crate::upstream::splice::Cut;
use crate::upstream::{Direct, KeptStream, Tunnel};

/// What the front works with.
#[derive(Debug)]
pub struct Front {
    /// Authentication mode and limits.
    pub config: Arc<Config>,
    /// API keys and the relay id, from memory.
    pub state: Arc<State>,
    /// The node list.
    pub sessions: Arc<Sessions>,
    /// Where calls go.
    pub router: Router,
    /// How calls over a session are carried.
    pub tunnel: Tunnel,
    /// The direct path's probe findings, for the node list.
    pub direct: Arc<Direct>,
    /// The install script, CA and agent binary for new hosts.
    pub install: Arc<install::Installer>,
    /// Request counts and durations.
    pub metrics: Arc<Metrics>,
    /// Calls in flight per node and tenant.
    pub slots: Arc<StreamSlots>,
    /// The fleet endpoint's view of each tenant's nodes.
    pub fleet: Arc<crate::fleet::cache::Cache>,
    /// Where hijacked pipes run.
    pub tasks: TaskTracker,
    /// Fires when the shutdown grace is over: long streams still open
    /// end cleanly at their next quiet moment.
    pub wind_down: tokio_util::sync::CancellationToken,
}

impl Front {
    /// Whether `node` of the caller's tenant exists for `principal`: any
    /// node for a caller without a scope; for a scoped one, a node whose
    /// labels its scope admits, as this relay's session has them, as the
    /// holding peer shares them, or, for a node that is offline, as its
    /// join token set them (a node known by none of these is out of scope).
    pub(super) fn sees(&self, principal: &Principal, node: &NodeId) -> bool {
        let scope = &principal.scope;
        if scope.is_all() {
            return true;
        }
        let key = NodeKey {
            tenant: principal.tenant.clone(),
            node_id: node.clone(),
        };
        if let Some(entry) = self.sessions.get(&key) {
            return entry.with_labels(|labels| scope.admits(node.as_str(), labels));
        }
        if let Some(view) = self.router.peer_view(&key) {
            return scope.admits(node.as_str(), &view.labels);
        }
        self.state
            .node_labels(&key)
            .is_some_and(|labels| scope.admits(node.as_str(), &labels))
    }
}

impl Front {
    /// What ends a stream of `principal`'s when its credential stops
    /// standing (expires or is revoked), with the last word its client
    /// reads, framed for a body of `content_type`; `None` for a caller
    /// with no credential (the local caller, the relay itself).
    pub(super) fn cut_for(&self, principal: &Principal, content_type: Option<&str>) -> Option<Cut> {
        let (kind, id) = match &principal.credentials {
            Credentials::ApiKey(id) => (Kind::ApiKey, id.as_str()),
            Credentials::Cert { serial, .. } => (Kind::ClientCert, serial.as_str()),
            Credentials::Local | Credentials::Relay => return None,
        };
        let withdrawn = self.state.standing().of(kind, id, principal.expires_at);
        let content_type = content_type.map(str::to_owned);
        Some(Cut {
            token: withdrawn.token().clone(),
            last_word: Box::new(move |first: &[u8]| {
                let text = format!(
                    "tunnelgate: the relay ended this stream: {}; make a new one \
                     (tunnelgate-relay api-key create, or ask an admin) and run the command again",
                    withdrawn.why()
                );
                // A daemon before API 1.42 names no type for a container's
                // logs, and calls every hijacked stream raw: a multiplexed
                // stream opens with a frame header (stream 0-2, three zero
                // bytes), a TTY's does not.
                let sniffed = match first {
                    [0..=2, 0, 0, 0, ..] => "application/vnd.docker.multiplexed-stream",
                    _ => "application/vnd.docker.raw-stream",
                };
                let kind = match content_type.as_deref() {
                    None | Some("application/vnd.docker.raw-stream") => sniffed,
                    Some(named) => named,
                };
                stream_notice(Some(kind), &text).map(Bytes::from)
            }),
        })
    }

    /// The caller's tenant's nodes that exist for it, with where each is
    /// held, sorted by id.
    pub(super) fn fleet_of(&self, principal: &Principal) -> Vec<(NodeId, Held)> {
        let mut fleet = self.router.fleet(&principal.tenant);
        if !principal.scope.is_all() {
            fleet.retain(|(node, _)| self.sees(principal, node));
        }
        fleet
    }
}

/// One client connection to the front.
#[derive(Debug)]
pub struct ClientConn {
    /// Who connected, and how.
    pub(super) meta: ConnMeta,
    /// The node stream this connection's calls may go on again.
    pub(super) kept: KeptStream,
}

impl ClientConn {
    /// A new connection.
    pub fn new(meta: ConnMeta) -> Self {
        Self {
            kept: KeptStream::on(meta.tasks.clone()),
            meta,
        }
    }
}

/// A new request id, distinct across relay restarts.
pub(super) fn next_request_id() -> RequestId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Random high bits keep ids distinct across relay restarts in logs.
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| rand::random::<u64>() & 0xffff_ffff_0000_0000);
    RequestId(base | NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A new trace for a call whose client sent none (sampled: the relay's
/// and agent's logs carry it whatever the flag).
pub(super) fn new_trace() -> TraceParent {
    TraceParent {
        trace_id: rand::random::<u128>().max(1),
        parent_id: rand::random::<u64>().max(1),
        flags: 1,
    }
}
