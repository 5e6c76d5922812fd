//! Carrying a call over a stream of the node's session on this relay.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::task::TaskTracker;
use tracing::{debug, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{StreamErrorCode, StreamHeader, StreamKind};
use tunnelgate_proto::{NodeId, ProtocolVersion};

use super::io::CallStream;
use super::kept::{KeptStream, NodeConn};
use super::reply::{find_setup_error, ReplyFirst};
use super::Target;
use crate::audit::CallRecord;
use crate::error::{CallError, SetupError};
use crate::metrics::Metrics;
use crate::sessions::Entry;

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
}

impl Tunnel {
    /// A tunnel whose streams are cut after `idle_timeout` without a byte,
    /// whose tasks run on `tasks`, and whose open streams count on `calls`.
    pub fn new(
        metrics: Arc<Metrics>,
        idle_timeout: Duration,
        tasks: TaskTracker,
        calls: TaskTracker,
    ) -> Self {
        Self {
            metrics,
            idle_timeout,
            tasks,
            calls,
        }
    }

    /// Sends `req` to the node over `entry`'s session and returns the
    /// node's response head. Not-upgrading calls go over `kept` when it
    /// holds a stream of this session, and leave their stream there; a
    /// kept stream that died between calls (its idle timer fired, its
    /// agent reconnected) and took nothing hands the call to a fresh one.
    pub async fn send(
        &self,
        entry: &Arc<Entry>,
        target: &Target,
        kept: &KeptStream,
        req: Request<Incoming>,
        upgrade: bool,
        record: &CallRecord,
    ) -> Result<Response<Incoming>, CallError> {
        let node = &target.node_id;
        let reused = match upgrade {
            true => None,
            false => kept.take(entry).await,
        };
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.open(entry, target).await?,
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
                        conn = self.open(entry, target).await?;
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
            kept.keep(entry, conn);
        }
        Ok(resp)
    }

    /// Opens a stream to the node, sends the stream header and starts
    /// HTTP/1.1 on it. Pipelined: the first request follows the header at
    /// once; [`ReplyFirst`] reads the agent's accept (or refusal) off the
    /// stream before the response.
    async fn open(&self, entry: &Entry, target: &Target) -> Result<NodeConn, CallError> {
        let node = &target.node_id;
        let setup =
            async {
                let mut stream = entry.session.open_stream().await.map_err(|source| {
                    CallError::SessionFailed {
                        node: node.clone(),
                        source,
                    }
                })?;
                let header = StreamHeader {
                    version: ProtocolVersion::CURRENT,
                    kind: StreamKind::DockerHttp,
                    request_id: target.request_id,
                    node_id: node.clone(),
                    traceparent: target.traceparent.clone(),
                };
                stream
                    .write_message(&header, DEFAULT_MAX_FRAME)
                    .await
                    .map_err(|source| CallError::HeaderNotSent {
                        node: node.clone(),
                        source,
                    })?;
                Ok::<_, CallError>(stream)
            };
        let stream = tokio::time::timeout(STREAM_SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| CallError::SetupTimeout {
                node: node.clone(),
                timeout: STREAM_SETUP_TIMEOUT,
            })??;
        debug!(transport = %entry.session.transport(), "stream opened to the agent");
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
