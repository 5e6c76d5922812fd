//! Serves the relay's streams into the Docker daemon: read the stream
//! header, connect to the daemon, answer accept or a typed error, then
//! pipe bytes both ways with half-close carried through. Under a policy
//! other than `full` the agent reads each HTTP request instead and
//! forwards only what the policy allows ([`checked`]).

mod checked;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{StreamErrorCode, StreamHeader, StreamKind, StreamReply};
use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::ProtocolVersion;
use tunnelgate_session::{Session, Stream};

use crate::config::AgentConfig;

/// How long the relay has to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest chunk per read in each direction: large enough for bulk
/// transfers (image save/load, cp) without per-chunk overhead.
const COPY_BUFFER: usize = 256 * 1024;

/// Accepts streams until the session ends or `done` fires; each is served
/// on its own task.
pub async fn accept_streams(
    session: Session,
    config: Arc<AgentConfig>,
    reprobe: Arc<Notify>,
    streams: TaskTracker,
    done: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            s = session.accept_stream() => match s {
                Ok(s) => s,
                Err(e) => {
                    // The control stream notices the loss too and ends the session.
                    debug!(error = %e, "no more streams on this session");
                    return;
                }
            },
            () = done.cancelled() => return,
        };
        // In-flight streams outlive `done`: a drained session's calls finish.
        streams.spawn(serve_stream(stream, config.clone(), reprobe.clone()).in_current_span());
    }
}

async fn serve_stream(mut stream: Stream, config: Arc<AgentConfig>, reprobe: Arc<Notify>) {
    let header = match tokio::time::timeout(
        HEADER_TIMEOUT,
        stream.read_message::<StreamHeader>(DEFAULT_MAX_FRAME),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!(error = %e, "unreadable stream header");
            return;
        }
        Err(_) => {
            debug!("no stream header in time");
            return;
        }
    };
    let trace_id = TraceParent::log_id(header.traceparent.as_deref());
    let span = info_span!("request", request_id = %header.request_id, node_id = %header.node_id, %trace_id);
    async move {
        let refuse = |code, message: String| StreamReply::Error { code, message };
        let refusal = if let Err(e) = ProtocolVersion::CURRENT.check_compatible(header.version) {
            Some(refuse(StreamErrorCode::IncompatibleVersion, e.to_string()))
        } else if header.kind != StreamKind::DockerHttp {
            Some(refuse(
                StreamErrorCode::UnsupportedKind,
                "this agent serves only Docker API streams".into(),
            ))
        } else if header.node_id != config.node_id {
            Some(refuse(
                StreamErrorCode::WrongNode,
                format!(
                    "this agent serves node {}, not {}",
                    config.node_id, header.node_id
                ),
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            debug!(?reply, "refusing stream");
            let _ = stream.write_message(&reply, DEFAULT_MAX_FRAME).await;
            return;
        }
        let daemon = match config.docker.connect().await {
            Ok(d) => d,
            Err(e) => {
                reprobe.notify_one();
                let message = format!(
                    "cannot connect to {}: {e}; is dockerd running on that host?",
                    config.docker
                );
                debug!(%message, "daemon unreachable");
                let _ = stream
                    .write_message(
                        &refuse(StreamErrorCode::DaemonUnreachable, message),
                        DEFAULT_MAX_FRAME,
                    )
                    .await;
                return;
            }
        };
        debug!("stream accepted");
        if let Err(e) = stream
            .write_message(&StreamReply::Accept, DEFAULT_MAX_FRAME)
            .await
        {
            debug!(error = %e, "relay went away before the call started");
            return;
        }
        if !config.policy.is_full() {
            return checked::serve(stream, daemon, &config.policy).await;
        }
        match tunnelgate_session::pipe::stream_and_io(stream, daemon, COPY_BUFFER).await {
            Ok((to_daemon, from_daemon)) => info!(to_daemon, from_daemon, "stream finished"),
            Err(e) => debug!(error = %e, "stream failed"),
        }
    }
    .instrument(span)
    .await
}
