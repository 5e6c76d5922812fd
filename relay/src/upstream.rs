//! How a call is carried once the router has picked its route.
//!
//! [`Tunnel`] carries a call over a stream of the node's session: it opens
//! the stream, writes the stream header with the request right behind it
//! ([`reply`]: the agent's accept is read off the stream before the
//! response), and speaks HTTP/1.1 over it. A client connection keeps its
//! last stream ([`KeptStream`]) so its next call to the node skips the
//! setup. [`splice`] pipes hijacked connections and releases a call's
//! guard when its last byte is relayed. Routes through a peer relay or
//! straight to a daemon get their own module here, beside `tunnel`.
//!
//! This module knows nothing of authentication, tenants' limits or the
//! front's paths: it gets a routed call and returns the node's answer.

pub mod io;
mod kept;
pub mod reply;
pub mod splice;
mod tunnel;

use tunnelgate_proto::{NodeId, RequestId};

pub use kept::KeptStream;
pub use tunnel::Tunnel;

/// What a call tells the node besides its HTTP request.
#[derive(Debug, Clone)]
pub struct Target {
    /// The node the call is for (the agent checks it is its own).
    pub node_id: NodeId,
    /// The call's id, logged on both sides.
    pub request_id: RequestId,
    /// The caller's W3C trace context, if any.
    pub traceparent: Option<String>,
}
