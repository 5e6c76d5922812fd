//! The relay-to-relay listener: calls that a peer relay received for a
//! node whose session this relay holds.
//!
//! Only a certificate of the installation's CA with the relay role
//! (`OU=relay`) is accepted; a node's or a client's certificate, or
//! another CA's, is refused, logged and counted
//! (`tunnelgate_relay_peer_handshakes_total`). A peer authenticated and
//! authorized its caller; this relay trusts the peer header only because
//! the connection is a relay's. Each stream names a node in its peer
//! header; this relay opens a stream on the node's session, writes the
//! stream header, and from then on pipes bytes both ways: the agent's
//! accept and the HTTP exchange pass through untouched, so the peer sees
//! exactly what a local session would give it. A call that arrived from a
//! peer is never forwarded again.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{
    PeerHeader, StreamErrorCode, StreamHeader, StreamKind, StreamReply,
};
use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::{NodeKey, ProtocolVersion, RelayId};
use tunnelgate_session::{tls, Session, Stream, HANDSHAKE_TIMEOUT};

use crate::metrics::{Handshake, Metrics};
use crate::sessions::Sessions;

/// Largest chunk a peer stream's pipe moves at once in each direction.
const PIPE_BUFFER: usize = 256 * 1024;

/// What the peer listener works with.
#[derive(Debug)]
pub struct PeerContext {
    /// This relay.
    pub relay_id: RelayId,
    /// The sessions peers' calls go to.
    pub sessions: Arc<Sessions>,
    /// Holds a token per stream in flight; the drain waits on it.
    pub calls: TaskTracker,
    /// Where peer handshakes are counted.
    pub metrics: Arc<Metrics>,
}

/// Accepts peer relays on `endpoint` until `stop_accepting`; their calls
/// run until `cancel`.
pub async fn run_peers(
    endpoint: quinn::Endpoint,
    ctx: Arc<PeerContext>,
    stop_accepting: CancellationToken,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
            () = stop_accepting.cancelled() => return,
        };
        let span = info_span!("peer", addr = %incoming.remote_address());
        let (ctx, cancel, streams) = (ctx.clone(), cancel.clone(), tasks.clone());
        tasks.spawn(
            async move {
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let result = super::quic_handshake_failure(&e);
                        ctx.metrics.peer_handshake(result);
                        return match result {
                            Handshake::TlsFailed => info!(
                                error = %e,
                                "peer handshake failed: a certificate not of this installation's CA, or a TLS error; if a relay of this cluster logs this, give it this installation's CA directory"
                            ),
                            _ => debug!(error = %e, "peer connection closed during its handshake"),
                        };
                    }
                    Err(_) => {
                        ctx.metrics.peer_handshake(Handshake::Timeout);
                        return debug!("peer handshake timed out");
                    }
                };
                let session = Session::from_quic(conn);
                let subject = session
                    .peer_certificates()
                    .and_then(|chain| chain.first().and_then(tls::subject));
                match subject {
                    Some(s) if s.role == Some(tls::Role::Relay) => {
                        ctx.metrics.peer_handshake(Handshake::Accepted);
                        info!(peer = %s.name, "peer relay connected");
                        serve_peer(session, ctx, cancel, streams).await;
                    }
                    other => {
                        ctx.metrics.peer_handshake(Handshake::Refused);
                        let role = other.as_ref().and_then(|s| s.role);
                        info!(
                            subject = other.as_ref().map_or("none", |s| s.name.as_str()),
                            ?role,
                            "refused a peer connection: its certificate is not a relay certificate of this installation"
                        );
                        session.close("not a relay certificate");
                    }
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_peer(
    session: Session,
    ctx: Arc<PeerContext>,
    cancel: CancellationToken,
    streams: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            s = session.accept_stream() => match s {
                Ok(s) => s,
                Err(e) => return debug!(error = %e, "peer connection ended"),
            },
            () = cancel.cancelled() => return session.close("relay shutting down"),
        };
        let token = ctx.calls.token();
        let ctx = ctx.clone();
        streams.spawn(
            async move {
                serve_stream(stream, &ctx).await;
                drop(token);
            }
            .in_current_span(),
        );
    }
}

async fn refuse(stream: &mut Stream, code: StreamErrorCode, message: String) {
    let reply = StreamReply::Error { code, message };
    let _ = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        stream.write_message(&reply, DEFAULT_MAX_FRAME),
    )
    .await;
}

/// Carries one peer stream on to the node's session.
async fn serve_stream(mut stream: Stream, ctx: &PeerContext) {
    let header = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        stream.read_message::<PeerHeader>(DEFAULT_MAX_FRAME),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return debug!(error = %e, "unreadable peer header"),
        Err(_) => return debug!("no peer header in time"),
    };
    let trace_id = TraceParent::log_id(header.traceparent.as_deref());
    let span = info_span!("request", request_id = %header.request_id, tenant = %header.tenant,
                          node_id = %header.node_id, %trace_id, from = "peer");
    async move {
        if let Err(e) = ProtocolVersion::CURRENT.check_compatible(header.version) {
            return refuse(&mut stream, StreamErrorCode::IncompatibleVersion, e.to_string()).await;
        }
        if header.kind != StreamKind::DockerHttp {
            let message = "this relay carries only Docker API streams for its peers".into();
            return refuse(&mut stream, StreamErrorCode::UnsupportedKind, message).await;
        }
        let key = NodeKey {
            tenant: header.tenant,
            node_id: header.node_id,
        };
        // One hop only: a call that came from a peer goes to a local
        // session or nowhere.
        let Some(entry) = ctx.sessions.get(&key) else {
            let message = format!("relay {} holds no session of node {key} (it moved or dropped)", ctx.relay_id);
            return refuse(&mut stream, StreamErrorCode::NodeNotHere, message).await;
        };
        let agent = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut agent = entry.session.open_stream().await.map_err(|e| e.to_string())?;
            let header = StreamHeader {
                version: ProtocolVersion::CURRENT,
                kind: StreamKind::DockerHttp,
                request_id: header.request_id,
                node_id: key.node_id.clone(),
                traceparent: header.traceparent,
            };
            agent
                .write_message(&header, DEFAULT_MAX_FRAME)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(agent)
        })
        .await;
        let agent = match agent {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let message = format!("node {key}'s session on relay {} failed: {e}", ctx.relay_id);
                return refuse(&mut stream, StreamErrorCode::NodeNotHere, message).await;
            }
            Err(_) => {
                let message = format!(
                    "node {key}'s agent did not take the call within {HANDSHAKE_TIMEOUT:?} on relay {}",
                    ctx.relay_id
                );
                return refuse(&mut stream, StreamErrorCode::NodeNotHere, message).await;
            }
        };
        match tunnelgate_session::pipe::streams(stream, agent, PIPE_BUFFER).await {
            Ok((to_agent, from_agent)) => debug!(to_agent, from_agent, "peer stream finished"),
            Err(e) => debug!(error = %e, "peer stream failed"),
        }
    }
    .instrument(span)
    .await
}
