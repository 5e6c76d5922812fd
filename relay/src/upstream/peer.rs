//! Connections to peer relays: one QUIC connection per peer, kept and
//! reused for every call to a node that peer holds, authenticated both
//! ways with relay certificates from the installation CA. A connection
//! that failed is dialled again on the next call; meanwhile the peer
//! counts as down, so calls prefer the node's other holders.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tunnelgate_proto::RelayId;
use tunnelgate_session::Session;

use crate::error::CallError;
use crate::registry::Member;

/// The relay's connections to its peers.
pub struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: Mutex<HashMap<RelayId, Session>>,
    /// When each peer last failed to connect or lost its connection.
    down: Mutex<HashMap<RelayId, Instant>>,
}

/// How long a peer that failed counts as down.
const DOWN_FOR: Duration = Duration::from_secs(10);
/// How long a peer may take to answer a dial: peers are near, and a
/// call waits on this while another holder might serve it.
const PEER_DIAL_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    /// Dials peers from `endpoint` with `client` (the relay certificate).
    pub fn new(endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Self {
        Self {
            endpoint,
            client,
            conns: Mutex::default(),
            down: Mutex::default(),
        }
    }

    /// Whether `relay` failed within the last few seconds.
    pub fn is_down(&self, relay: &RelayId) -> bool {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(relay).is_some_and(|at| at.elapsed() < DOWN_FOR)
    }

    fn mark(&self, relay: &RelayId, failed: bool) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match failed {
            true => down.insert(relay.clone(), Instant::now()),
            false => down.remove(relay),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RelayId, Session>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept connection to `peer`, dialled when there is none or the
    /// last one ended. The lock is never held while dialling.
    pub(super) async fn session(&self, peer: &Member) -> Result<Session, CallError> {
        if let Some(s) = self.lock().get(&peer.relay_id) {
            if s.end_reason().is_none() {
                return Ok(s.clone());
            }
            self.mark(&peer.relay_id, true);
        }
        let dialled = self.dial(peer).await;
        self.mark(&peer.relay_id, dialled.is_err());
        dialled
    }

    async fn dial(&self, peer: &Member) -> Result<Session, CallError> {
        let failed = |reason: String| CallError::PeerUnreachable {
            relay: peer.relay_id.clone(),
            reason,
        };
        let addr: SocketAddr = tokio::net::lookup_host(&peer.peer_addr)
            .await
            .map_err(|e| {
                failed(format!(
                    "cannot resolve its peer address {}: {e}",
                    peer.peer_addr
                ))
            })?
            .next()
            .ok_or_else(|| {
                failed(format!(
                    "its peer address {} resolves to nothing",
                    peer.peer_addr
                ))
            })?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, peer.relay_id.as_str())
            .map_err(|e| failed(format!("cannot dial {addr}: {e}")))?;
        let conn = tokio::time::timeout(PEER_DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                failed(format!(
                    "no QUIC answer from {addr} within {PEER_DIAL_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| failed(format!("QUIC handshake with {addr} failed: {e}")))?;
        let session = Session::from_quic(conn);
        self.lock().insert(peer.relay_id.clone(), session.clone());
        Ok(session)
    }

    /// Closes every peer connection (the relay is stopping).
    pub fn close(&self) {
        for (_, s) in self.lock().drain() {
            s.close("relay shutting down");
        }
    }
}
