//! Carrying a call over a stream of the node's session on this relay, or
//! of the connection to the peer relay that holds one.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{Message, PeerHeader, StreamErrorCode, StreamHeader, StreamKind};
use tunnelgate_proto::{NodeId, NodeKey, ProtocolVersion};
use tunnelgate_session::Stream;

use super::io::CallStream;
use super::kept::{Carrier, KeptStream, NodeConn};
use super::peer::Peers;
use super::reply::{find_setup_error, ReplyFirst};
use super::Target;
use crate::audit::CallRecord;
use crate::error::{CallError, SetupError};
use crate::metrics::Metrics;
use crate::registry::Member;
use crate::sessions::Entry;

/// What carries a routed call.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// A session of the node on this relay.
    Session(&'a Arc<Entry>),
    /// The peer relay that holds one.
    Peer(&'a Member),
}

impl Via<'_> {
    fn carrier(&self) -> Carrier {
        match self {
            Self::Session(entry) => Carrier::Session(entry.id()),
            Self::Peer(peer) => Carrier::Peer(peer.relay_id.clone()),
        }
    }
}

/// How long opening a stream and hearing the agent's answer may take.
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Carries calls over agent sessions.
#[derive(Debug, Clone)]
pub struct Tunnel {
    metrics: Arc<Metrics>,
    idle_timeout: Duration,
    /// Where the per-stream HTTP connection tasks run.
    tasks: TaskTracker,
    /// Holds a token per open stream; the drain waits on it.
    calls: TaskTracker,
    /// Connections to peer relays, in a cluster.
    peers: Option<Arc<Peers>>,
}

impl Tunnel {
    /// A tunnel whose streams are cut after `idle_timeout` without a byte,
    /// whose tasks run on `tasks`, and whose open streams count on `calls`.
    pub fn new(
        metrics: Arc<Metrics>,
        idle_timeout: Duration,
        tasks: TaskTracker,
        calls: TaskTracker,
        peers: Option<Arc<Peers>>,
    ) -> Self {
        Self {
            metrics,
            idle_timeout,
            tasks,
            calls,
            peers,
        }
    }

    /// Sends `req` to the node `via` its session or a peer and returns the
    /// node's response head. Not-upgrading calls go over `kept` when it
    /// holds a stream of that carrier, and leave their stream there; a
    /// kept stream that died between calls (its idle timer fired, its
    /// agent reconnected) and took nothing hands the call to a fresh one.
    pub async fn send(
        &self,
        via: Via<'_>,
        target: &Target,
        kept: &KeptStream,
        req: Request<Incoming>,
        upgrade: bool,
        record: &CallRecord,
    ) -> Result<Response<Incoming>, CallError> {
        let node = &target.node_id;
        let key = NodeKey {
            tenant: target.tenant.clone(),
            node_id: node.clone(),
        };
        let carrier = via.carrier();
        let reused = match upgrade {
            true => None,
            false => kept.take(&key, &carrier).await,
        };
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.open(via, target).await?,
        };
        record.count_on(&conn.bytes);
        let resp = match conn.sender.try_send_request(req).await {
            Ok(resp) => resp,
            Err(mut e) => {
                let unsent = e.take_message();
                let error = failure(node, e.into_error(), unsent.is_some());
                match unsent {
                    Some(req) if was_reused && error.is_retry_safe() => {
                        debug!(error = %error, "kept stream failed; opening a new one");
                        conn = self.open(via, target).await?;
                        record.count_on(&conn.bytes);
                        conn.sender
                            .send_request(req)
                            .await
                            .map_err(|e| failure(node, e, false))?
                    }
                    _ => return Err(error),
                }
            }
        };
        if !upgrade && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            kept.keep(&key, carrier, conn);
        }
        Ok(resp)
    }

    /// Opens a stream to the node, sends the stream header and starts
    /// HTTP/1.1 on it. Pipelined: the first request follows the header at
    /// once; [`ReplyFirst`] reads the agent's accept (or refusal) off the
    /// stream before the response.
    async fn open(&self, via: Via<'_>, target: &Target) -> Result<NodeConn, CallError> {
        let node = &target.node_id;
        let setup = async {
            match via {
                Via::Session(entry) => self.open_on_session(entry, target).await,
                Via::Peer(peer) => self.open_on_peer(peer, target).await,
            }
        };
        let stream = tokio::time::timeout(STREAM_SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| CallError::SetupTimeout {
                node: node.clone(),
                timeout: STREAM_SETUP_TIMEOUT,
            })??;
        debug!(via = ?via.carrier(), "stream opened towards the agent");
        let stream = CallStream::new(
            ReplyFirst::new(stream, STREAM_SETUP_TIMEOUT),
            self.metrics.clone(),
            self.idle_timeout,
            self.calls.token(),
        );
        let bytes = stream.bytes();
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, Incoming>(TokioIo::new(stream))
            .await
            .map_err(CallError::Http)?;
        self.tasks.spawn(
            async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(error = %e, "node connection ended with an error");
                }
            }
            .in_current_span(),
        );
        Ok(NodeConn { sender, bytes })
    }
}

impl Tunnel {
    async fn open_on_session(&self, entry: &Entry, target: &Target) -> Result<Stream, CallError> {
        let node = &target.node_id;
        let stream =
            entry
                .session
                .open_stream()
                .await
                .map_err(|source| CallError::SessionFailed {
                    node: node.clone(),
                    source,
                })?;
        let header = StreamHeader {
            version: ProtocolVersion::CURRENT,
            kind: StreamKind::DockerHttp,
            request_id: target.request_id,
            node_id: node.clone(),
            traceparent: target.traceparent.clone(),
        };
        send_header(stream, &header, node).await
    }

    /// A stream to `peer` that it carries on to the node's session: after
    /// the peer header it is exactly an agent stream.
    async fn open_on_peer(&self, peer: &Member, target: &Target) -> Result<Stream, CallError> {
        let node = &target.node_id;
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| CallError::PeerUnreachable {
                relay: peer.relay_id.clone(),
                reason: "this relay has no peer port (it runs without --registry etcd)".into(),
            })?;
        let session = peers.session(peer).await?;
        let failed = |source| CallError::PeerFailed {
            relay: peer.relay_id.clone(),
            node: node.clone(),
            source,
        };
        let stream = session.open_stream().await.map_err(failed)?;
        let header = PeerHeader {
            version: ProtocolVersion::CURRENT,
            kind: StreamKind::DockerHttp,
            request_id: target.request_id,
            tenant: target.tenant.clone(),
            node_id: node.clone(),
            traceparent: target.traceparent.clone(),
        };
        send_header(stream, &header, node).await
    }
}

/// Writes a call's first frame on its new stream.
async fn send_header(
    mut stream: Stream,
    header: &impl Message,
    node: &NodeId,
) -> Result<Stream, CallError> {
    stream
        .write_message(header, DEFAULT_MAX_FRAME)
        .await
        .map_err(|source| CallError::HeaderNotSent {
            node: node.clone(),
            source,
        })?;
    Ok(stream)
}

/// The error for a call that failed before the daemon answered; `unsent`
/// when the request never left.
fn failure(node: &NodeId, err: hyper::Error, unsent: bool) -> CallError {
    let node = node.clone();
    match find_setup_error(&err).cloned() {
        Some(SetupError::Refused {
            code: StreamErrorCode::DaemonUnreachable,
            message,
        }) => CallError::DaemonUnreachable { node, message },
        Some(source) => CallError::Setup { node, source },
        None if unsent => CallError::NotSent { node, source: err },
        None => CallError::NoAnswer { node, source: err },
    }
}
