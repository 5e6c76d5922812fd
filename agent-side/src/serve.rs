//! Serves the relay's streams into the Docker daemon: read the stream
//! header, connect to the daemon, answer accept or a typed error, then
//! pipe bytes both ways with half-close carried through. Under a policy
//! other than `full` the agent reads each HTTP request instead and
//! forwards only what the policy allows ([`crate::policy`]).

use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{StreamErrorCode, StreamHeader, StreamKind, StreamReply};
use tunnelgate_proto::ProtocolVersion;
use tunnelgate_session::{Session, Stream};

use crate::docker::DaemonIo;
use crate::policy::Policy;
use crate::AgentConfig;

/// How long the relay has to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer per direction: large enough for bulk transfers (image
/// save/load, cp) without per-chunk overhead.
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
    let span = info_span!("request", request_id = %header.request_id, node_id = %header.node_id);
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
        let mut daemon = match config.docker.connect().await {
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
            return serve_checked(stream, daemon, &config.policy).await;
        }
        match tokio::io::copy_bidirectional_with_sizes(
            &mut stream,
            &mut daemon,
            COPY_BUFFER,
            COPY_BUFFER,
        )
        .await
        {
            Ok((to_daemon, from_daemon)) => debug!(to_daemon, from_daemon, "stream finished"),
            Err(e) => debug!(error = %e, "stream failed"),
        }
    }
    .instrument(span)
    .await
}

/// Serves the stream as an HTTP server whose every request passes
/// `policy` before it goes to the daemon; refusals are answered here.
async fn serve_checked(stream: Stream, daemon: Pin<Box<dyn DaemonIo>>, policy: &Policy) {
    let (sender, conn) =
        match hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(daemon)).await {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "cannot start HTTP to the daemon");
                return;
            }
        };
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "daemon connection ended with an error");
            }
        }
        .in_current_span(),
    );
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let upgrade = req.headers().contains_key(http::header::UPGRADE);
            if let Err(why) = policy.check(req.method().as_str(), req.uri().path(), upgrade) {
                info!(method = %req.method(), path = req.uri().path(), policy = %policy.name, "call refused by policy");
                let body = serde_json::json!({ "message": why }).to_string();
                let resp = Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Either::Right(Full::new(Bytes::from(body))))
                    .expect("static response parts are valid");
                return Ok::<_, hyper::Error>(resp);
            }
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let mut resp = sender.lock().await.send_request(req).await?;
            if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (resp.status(), client_upgrade)
            {
                let daemon = hyper::upgrade::on(&mut resp);
                tokio::spawn(
                    async move {
                        if let Ok((client, daemon)) = tokio::try_join!(client, daemon) {
                            let _ = tokio::io::copy_bidirectional(
                                &mut TokioIo::new(client),
                                &mut TokioIo::new(daemon),
                            )
                            .await;
                        }
                    }
                    .in_current_span(),
                );
            }
            Ok(resp.map(Either::Left))
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(error = %e, "checked stream ended with an error");
    }
}
