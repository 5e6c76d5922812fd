//! Carrying a call over a stream of the node's session on this relay, of
//! the connection to the peer relay that holds one, or of a TLS
//! connection straight to the node's daemon.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{Message, PeerHeader, StreamErrorCode, StreamHeader, StreamKind};
use tunnelgate_proto::{NodeId, ProtocolVersion};
use tunnelgate_session::Stream;

use super::direct::{Direct, Endpoint};
use super::io::CallStream;
use super::kept::{CallBody, Carrier, KeptStream, NodeConn};
use super::lean::{self, NodeBody};
use super::peer::Peers;
use super::reply::{find_setup_error, ReplyFirst};
use super::Target;
use crate::audit::{CallRecord, StreamBytes};
use crate::error::{CallError, SetupError};
use crate::metrics::Metrics;
use crate::registry::Member;
use crate::sessions::Entry;

/// What carries a routed call.
#[derive(Debug, Clone)]
pub enum Via {
    /// The node's own daemon port, over mutual TLS.
    Direct(Endpoint),
    /// A session of the node on this relay.
    Session(Arc<Entry>),
    /// A peer relay that holds one.
    Peer(Member),
}

impl Via {
    fn carrier(&self) -> Carrier {
        match self {
            Self::Direct(endpoint) => Carrier::Direct(endpoint.url.clone()),
            Self::Session(entry) => Carrier::Session(entry.id()),
            Self::Peer(peer) => Carrier::Peer(peer.relay_id.clone()),
        }
    }

    /// The route's name in the response header, logs and the audit line:
    /// `direct`, `local` or `peer=<relay-id>`.
    pub fn name(&self) -> String {
        match self {
            Self::Direct(_) => "direct".into(),
            Self::Session(_) => "local".into(),
            Self::Peer(peer) => format!("peer={}", peer.relay_id),
        }
    }

    /// The route's kind, as the metrics label it: `direct`, `local`, `peer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Direct(_) => "direct",
            Self::Session(_) => "local",
            Self::Peer(_) => "peer",
        }
    }
}

/// Bodies up to this size are read before the call goes out, so a call
/// that fails before reaching the daemon can be sent again elsewhere.
/// Docker's short calls (inspect, create, start, stop) send a little JSON
/// or nothing; archives and builds stream and are never repeated.
const REPLAYABLE_BODY: u64 = 64 * 1024;

/// A request that can be built again for another attempt.
struct Replayable {
    head: http::request::Parts,
    body: Bytes,
}

impl Replayable {
    /// The request, for the last attempt: moved, not copied.
    fn into_request(self) -> Request<CallBody> {
        Request::from_parts(self.head, Either::Right(Full::new(self.body)))
    }

    fn request(&self) -> Request<CallBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.head.method.clone();
        *req.uri_mut() = self.head.uri.clone();
        *req.version_mut() = self.head.version;
        *req.headers_mut() = self.head.headers.clone();
        req
    }
}

/// The call as the tunnel holds it between attempts.
enum Outgoing {
    Replayable(Replayable),
    /// Streamed: it can go again only if an attempt gave it back unsent.
    Streamed(Option<Request<CallBody>>),
}

impl Outgoing {
    /// Reads a small body in full; streams a large, unsized or upgrading one.
    /// A body the relay made itself is whole already.
    async fn new(req: Request<CallBody>, upgrade: bool) -> Result<Self, CallError> {
        let (head, body) = req.into_parts();
        let incoming = match body {
            Either::Right(whole) => {
                let body = whole
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_else(|never| match never {});
                return Ok(Self::Replayable(Replayable { head, body }));
            }
            Either::Left(incoming) => incoming,
        };
        let small = !upgrade
            && !head.headers.contains_key(http::header::TRANSFER_ENCODING)
            && head
                .headers
                .get(http::header::CONTENT_LENGTH)
                .map_or(Some(0), |v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|len| len <= REPLAYABLE_BODY);
        if !small {
            let req = Request::from_parts(head, Either::Left(incoming));
            return Ok(Self::Streamed(Some(req)));
        }
        let body = incoming
            .collect()
            .await
            .map_err(CallError::RequestBody)?
            .to_bytes();
        Ok(Self::Replayable(Replayable { head, body }))
    }

    /// The request for one attempt; a copy of a replayable one only when
    /// another attempt may follow (most calls have one route, and so no
    /// copy of their head).
    fn take(&mut self, more_to_come: bool) -> Option<Request<CallBody>> {
        match self {
            Self::Replayable(r) if more_to_come => Some(r.request()),
            Self::Replayable(_) => match std::mem::replace(self, Self::Streamed(None)) {
                Self::Replayable(r) => Some(r.into_request()),
                Self::Streamed(_) => None,
            },
            Self::Streamed(req) => req.take(),
        }
    }

    /// Whether the call is a GET or HEAD read in full: Docker's reads
    /// change nothing, so one can be sent twice.
    fn is_read_only(&self) -> bool {
        matches!(self, Self::Replayable(r) if r.head.method == http::Method::GET || r.head.method == http::Method::HEAD)
    }

    fn give_back(&mut self, unsent: Option<Request<CallBody>>) {
        if let (Self::Streamed(slot), Some(req)) = (self, unsent) {
            *slot = Some(req);
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
    /// Where a stream's HTTP connection runs when no client connection's
    /// task drives it (the relay's own calls).
    tasks: TaskTracker,
    /// Holds a token per open stream; the drain waits on it.
    calls: TaskTracker,
    /// Connections to peer relays, in a cluster.
    peers: Option<Arc<Peers>>,
    /// The direct path to nodes' daemons.
    direct: Arc<Direct>,
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
        direct: Arc<Direct>,
    ) -> Self {
        Self {
            metrics,
            idle_timeout,
            tasks,
            calls,
            peers,
            direct,
        }
    }

    /// Sends `req` to the node over the first of `vias` that takes it and
    /// returns the node's response head and the route that carried it.
    /// A call that fails before any byte of it reached the daemon goes
    /// once more, on the next route; anything else is the caller's error.
    pub async fn send(
        &self,
        vias: &[Via],
        target: &Target,
        kept: &KeptStream,
        req: Request<CallBody>,
        upgrade: bool,
        record: &CallRecord,
    ) -> Result<(Response<NodeBody>, Via), CallError> {
        let mut call = Outgoing::new(req, upgrade).await?;
        let mut vias = self.ordered(vias).into_iter().take(2).peekable();
        loop {
            let via = vias
                .next()
                .ok_or_else(|| CallError::NodeOffline(target.node_id.clone()))?;
            let read_only = call.is_read_only();
            let req = call
                .take(vias.peek().is_some())
                .expect("a call is taken once per attempt and given back on retry");
            match self
                .send_once(&via, target, kept, req, upgrade, record)
                .await
            {
                Ok(resp) => return Ok((resp, via)),
                Err((error, unsent)) => {
                    call.give_back(unsent);
                    // A direct connection cut mid-call (the port was
                    // closed under it) may have delivered the request, so
                    // only a read-only call goes again, through the tunnel.
                    let direct_cut = matches!(via, Via::Direct(_))
                        && read_only
                        && matches!(error, CallError::NoAnswer { .. });
                    if let (Via::Direct(endpoint), true) =
                        (&via, error.is_retry_safe() || direct_cut)
                    {
                        self.direct
                            .mark_down(&target.key(), endpoint, &error.to_string());
                    }
                    let again = (error.worth_another_route() || direct_cut)
                        && vias.peek().is_some()
                        && matches!(&call, Outgoing::Replayable(_) | Outgoing::Streamed(Some(_)));
                    let error = match &via {
                        Via::Peer(peer) => error.through_peer(&peer.relay_id),
                        Via::Session(_) | Via::Direct(_) => error,
                    };
                    if !again {
                        return Err(error);
                    }
                    match via {
                        // Routine when a daemon port closes: the probe
                        // says so once; no operator needs to act per call.
                        Via::Direct(_) => {
                            debug!(%error, "the direct path failed; the call goes through the tunnel")
                        }
                        _ => {
                            warn!(route = %via.name(), %error, "the call failed before reaching the daemon; trying the next route")
                        }
                    }
                    self.metrics.route_retry();
                }
            }
        }
    }

    /// Direct first (the router offers it only while its probe holds),
    /// then local, then the peers that answered last time, then those
    /// that did not (a dead relay's lease outlives it by seconds, and the
    /// node's other holder is the better bet meanwhile); a draining peer
    /// after a live one, so its agents' old sessions fall quiet and go.
    /// The sort is stable: within each rank, the newest session first.
    fn ordered(&self, vias: &[Via]) -> Vec<Via> {
        let mut vias = vias.to_vec();
        let rank = |v: &Via| match (v, &self.peers) {
            (Via::Direct(_), _) => (false, false, false),
            (Via::Session(_), _) => (false, false, true),
            (Via::Peer(p), Some(peers)) => (true, peers.is_down(&p.relay_id), p.draining),
            (Via::Peer(p), None) => (true, false, p.draining),
        };
        vias.sort_by_key(rank);
        vias
    }

    /// One attempt over `via`. Not-upgrading calls go over `kept` when it
    /// holds a stream of that carrier, and leave their stream there; a
    /// kept stream that died between calls (its idle timer fired, its
    /// agent reconnected) and took nothing hands the call to a fresh one.
    /// On failure, the request comes back if it was never sent.
    async fn send_once(
        &self,
        via: &Via,
        target: &Target,
        kept: &KeptStream,
        req: Request<CallBody>,
        upgrade: bool,
        record: &CallRecord,
    ) -> Result<Response<NodeBody>, (CallError, Option<Request<CallBody>>)> {
        if !upgrade && req.extensions().get::<lean::Watch>().is_some() {
            return self.watch(via, target, req, record).await;
        }
        let node = &target.node_id;
        let key = target.key();
        let carrier = via.carrier();
        let reused = match upgrade {
            true => None,
            false => kept.take(&key, &carrier).await,
        };
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(conn) => conn,
            None => match self.open(via, target, kept).await {
                Ok(conn) => conn,
                Err(e) => return Err((e, Some(req))),
            },
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
                        conn = match self.open(via, target, kept).await {
                            Ok(conn) => conn,
                            Err(e) => return Err((e, Some(req))),
                        };
                        record.count_on(&conn.bytes);
                        match conn.sender.try_send_request(req).await {
                            Ok(resp) => resp,
                            Err(mut e) => {
                                let unsent = e.take_message();
                                let error = failure(node, e.into_error(), unsent.is_some());
                                return Err((error, unsent));
                            }
                        }
                    }
                    unsent => return Err((error, unsent)),
                }
            }
        };
        if !upgrade && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            kept.keep(&key, carrier, conn);
        }
        Ok(resp.map(NodeBody::Http))
    }

    /// Opens a stream to the node, sends the stream header and starts
    /// HTTP/1.1 on it. Pipelined: the first request follows the header at
    /// once; [`ReplyFirst`] reads the agent's accept (or refusal) off the
    /// stream before the response.
    async fn open(
        &self,
        via: &Via,
        target: &Target,
        kept: &KeptStream,
    ) -> Result<NodeConn, CallError> {
        match self.open_io(via, target).await? {
            Opened::Direct(tls) => self.start_http(tls, kept).await,
            Opened::Stream(stream) => self.start_http(stream, kept).await,
        }
    }

    /// Opens a stream to the node over `via`, with its header sent.
    async fn open_io(&self, via: &Via, target: &Target) -> Result<Opened, CallError> {
        let node = &target.node_id;
        let setup = async {
            Ok(match via {
                Via::Direct(endpoint) => {
                    let tls = self.direct.connect(&target.key(), endpoint).await?;
                    debug!(endpoint = %endpoint.url, "connected to the node's daemon directly");
                    Opened::Direct(tls)
                }
                Via::Session(entry) => {
                    let stream = self.open_on_session(entry, target).await?;
                    Opened::Stream(ReplyFirst::new(stream, STREAM_SETUP_TIMEOUT))
                }
                Via::Peer(peer) => {
                    let stream = self.open_on_peer(peer, target).await?;
                    Opened::Stream(ReplyFirst::new(stream, STREAM_SETUP_TIMEOUT))
                }
            })
        };
        tokio::time::timeout(STREAM_SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| CallError::SetupTimeout {
                node: node.clone(),
                timeout: STREAM_SETUP_TIMEOUT,
            })?
    }

    /// One of the relay's own event streams ([`lean::Watch`]), carried by
    /// [`lean::get`]: no HTTP client connection is kept beside it.
    async fn watch(
        &self,
        via: &Via,
        target: &Target,
        req: Request<CallBody>,
        record: &CallRecord,
    ) -> Result<Response<NodeBody>, (CallError, Option<Request<CallBody>>)> {
        let (io, bytes) = match self.open_io(via, target).await {
            Ok(Opened::Direct(tls)) => self.boxed_call_stream(tls),
            Ok(Opened::Stream(stream)) => self.boxed_call_stream(stream),
            Err(e) => return Err((e, Some(req))),
        };
        record.count_on(&bytes);
        let (head, _) = req.into_parts();
        let node = &target.node_id;
        let resp = lean::get(io, &head).await.map_err(|e| {
            let error = setup_failure(node, &e).unwrap_or_else(|| CallError::Unanswered {
                node: node.clone(),
                source: Box::new(e),
            });
            (error, None)
        })?;
        Ok(resp.map(NodeBody::Lean))
    }

    /// Speaks HTTP/1.1 over `io`, counted and timed as a call stream,
    /// driven on the task of the client connection that `kept` belongs to.
    async fn start_http<S>(&self, io: S, kept: &KeptStream) -> Result<NodeConn, CallError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let stream = self.call_stream(io);
        let bytes = stream.bytes();
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake::<_, CallBody>(TokioIo::new(stream))
            .await
            .map_err(CallError::Http)?;
        let conn = Box::pin(
            async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(error = %e, "node connection ended with an error");
                }
            }
            .in_current_span(),
        );
        if let Err(conn) = kept.drive(conn) {
            self.tasks.spawn(conn);
        }
        Ok(NodeConn { sender, bytes })
    }
}

/// A stream to the node, opened by [`Tunnel::open_io`]. Moved once per
/// call, into its HTTP connection: not worth a box.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Direct(tokio_rustls::client::TlsStream<tokio::net::TcpStream>),
    Stream(ReplyFirst<Stream>),
}

impl Tunnel {
    /// `io` as [`Tunnel::call_stream`] makes it, boxed, and its counts.
    fn boxed_call_stream<S: lean::Io + 'static>(
        &self,
        io: S,
    ) -> (Box<dyn lean::Io>, Arc<StreamBytes>) {
        let stream = self.call_stream(io);
        let bytes = stream.bytes();
        (Box::new(stream), bytes)
    }

    /// `io` counted and timed as a call stream.
    fn call_stream<S>(&self, io: S) -> CallStream<S> {
        CallStream::new(
            io,
            self.metrics.clone(),
            self.idle_timeout,
            self.calls.token(),
        )
    }

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
    setup_failure(node, &err).unwrap_or_else(|| {
        let node = node.clone();
        match unsent {
            true => CallError::NotSent { node, source: err },
            false => CallError::NoAnswer { node, source: err },
        }
    })
}

/// The error for a call the agent refused or failed to set up, if `err`
/// says it did.
fn setup_failure(node: &NodeId, err: &(dyn std::error::Error + 'static)) -> Option<CallError> {
    let node = node.clone();
    Some(match find_setup_error(err).cloned()? {
        SetupError::Refused {
            code: StreamErrorCode::DaemonUnreachable,
            message,
        } => CallError::DaemonUnreachable { node, message },
        source => CallError::Setup { node, source },
    })
}
