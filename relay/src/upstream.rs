//! How a call is carried once the router has picked its route.
//!
//! [`Tunnel`] carries a call over a stream of the node's session on this
//! relay, or over a stream to the peer relay that holds one ([`peer`]):
//! it opens the stream, writes the stream header (or the peer header,
//! which the peer turns into one) with the request right behind it
//! ([`reply`]: the agent's accept is read off the stream before the
//! response), and speaks HTTP/1.1 over it. Both ways look the same from
//! there on. A client connection keeps its last stream ([`KeptStream`])
//! so its next call to the node skips the setup. [`splice`] pipes
//! hijacked connections and releases a call's guard when its last byte
//! is relayed. [`direct`] carries a call straight to the node's daemon
//! port over mutual TLS, and probes which daemons this relay can reach so.
//! [`lean`] reads the relay's own event streams (one per node, for the
//! fleet's view) without an HTTP client connection beside each.
//!
//! This module knows nothing of authentication, tenants' limits or the
//! front's paths: it gets a routed call and returns the node's answer.

pub mod direct;
pub mod io;
mod kept;
pub mod lean;
pub mod peer;
pub mod reply;
pub mod splice;
mod tunnel;

use tunnelgate_proto::{NodeId, NodeKey, RequestId, TenantId};

pub use direct::{Direct, DirectMode};
pub use kept::{CallBody, KeptStream};
pub use lean::{NodeBody, Watch};
pub use peer::Peers;
pub use tunnel::{Tunnel, Via};

/// What a call tells the node besides its HTTP request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node's tenant (a peer relay looks the node up in it).
    pub tenant: TenantId,
    /// The node the call is for (the agent checks it is its own).
    pub node_id: NodeId,
    /// The call's id, logged on both sides.
    pub request_id: RequestId,
    /// The caller's W3C trace context, if any.
    pub traceparent: Option<String>,
}

impl Target {
    /// The node's tenant and id together.
    pub fn key(&self) -> NodeKey {
        NodeKey {
            tenant: self.tenant.clone(),
            node_id: self.node_id.clone(),
        }
    }
}
