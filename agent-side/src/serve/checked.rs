//! A stream served under a policy other than `full`: the agent speaks
//! HTTP to the relay itself and forwards to the daemon only the requests
//! the policy allows; the rest it answers with a 403 naming the policy.
//! Checked here, on the host, so a compromised relay cannot exceed it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{debug, info, Instrument};
use tunnelgate_session::Stream;

use crate::docker::DaemonIo;
use crate::policy::Policy;

/// Serves the stream as an HTTP server whose every request passes
/// `policy` before it goes to the daemon; refusals are answered here.
pub(super) async fn serve(stream: Stream, daemon: Pin<Box<dyn DaemonIo>>, policy: &Policy) {
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
    // hyper serves one request of a connection at a time, so the sender
    // is free whenever a request arrives; the lock only hands it over and
    // is never held across the wait for the daemon.
    let sender: Arc<Mutex<SendRequest<Incoming>>> = Arc::new(Mutex::new(sender));
    let service = service_fn(move |mut req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let headers = req.headers();
            let upgrade = tunnelgate_proto::docker_api::is_upgrade(
                headers
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .map(http::HeaderValue::as_bytes),
                headers.contains_key(http::header::UPGRADE),
            );
            if let Err(why) = policy.check(req.method().as_str(), req.uri().path(), upgrade) {
                info!(method = %req.method(), path = req.uri().path(), policy = %policy.name, "call refused by policy");
                let body = tunnelgate_proto::docker_api::error_body(&why);
                let resp = Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Either::Right(Full::new(Bytes::from(body))))
                    .expect("static response parts are valid");
                return Ok::<_, hyper::Error>(resp);
            }
            let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
            let sent = sender
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send_request(req);
            let mut resp = sent.await?;
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
