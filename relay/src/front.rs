//! The HTTP front: where control-plane clients speak the Docker API.
//!
//! `/nodes/<node-id>/<docker path>` goes to that node with the prefix
//! stripped; `/v1/nodes[/<id>]` lists connected nodes. For each Docker call
//! the front opens one stream on the node's session, exchanges the stream
//! header, then speaks HTTP/1.1 over it to the daemon behind the agent.
//! Bodies stream both ways as they are produced, and `Connection: Upgrade`
//! hijacks (attach, exec) become a byte pipe with half-close carried
//! through.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{StreamErrorCode, StreamHeader, StreamKind};
use tunnelgate_proto::{NodeId, ProtocolVersion, RequestId};

use crate::error::{ErrorSource, FrontError};
use crate::io::Counted;
use crate::reply::{find_setup_error, ReplyFirst, SetupError};
use crate::Shared;

/// The response body type of every front response.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long opening a stream and hearing the agent's answer may take.
const STREAM_SETUP_TIMEOUT: Duration = Duration::from_secs(15);

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn next_request_id() -> RequestId {
    // Random high bits keep ids distinct across relay restarts in logs.
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| rand::random::<u64>() & 0xffff_ffff_0000_0000);
    RequestId(base | NEXT_REQUEST.fetch_add(1, Ordering::Relaxed))
}

/// A Docker-style JSON error response: the `docker` CLI prints `message`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let body = serde_json::json!({ "message": message.into() }).to_string();
    json_response(status, body)
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("static response parts are valid")
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    NodeList,
    NodeInfo(&'a str),
    Docker { node: &'a str, rest: &'a str },
    NotFound,
}

fn route(path: &str) -> Route<'_> {
    if path == "/v1/nodes" || path == "/v1/nodes/" {
        return Route::NodeList;
    }
    if let Some(id) = path.strip_prefix("/v1/nodes/") {
        return Route::NodeInfo(id);
    }
    if let Some(after) = path.strip_prefix("/nodes/") {
        let (node, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, "/"),
        };
        return Route::Docker { node, rest };
    }
    Route::NotFound
}

/// Answers one control-plane request.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match route(&path) {
        Route::NodeList if req.method() == Method::GET => {
            let views = shared.sessions.views(shared.authority.relay_id());
            json_response(StatusCode::OK, serde_json::to_string(&views).expect("views serialize"))
        }
        Route::NodeInfo(id) if req.method() == Method::GET => {
            let entry = NodeId::new(id).ok().and_then(|n| shared.sessions.get(&n));
            match entry {
                Some(e) => {
                    let view = e.view(shared.authority.relay_id());
                    json_response(StatusCode::OK, serde_json::to_string(&view).expect("view serializes"))
                }
                None => FrontError::unknown_node(id).into_response(),
            }
        }
        Route::NodeList | Route::NodeInfo(_) => json_error(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported on /v1/nodes"),
        Route::Docker { node, rest } => {
            let request_id = next_request_id();
            let span = info_span!("request", %request_id, node_id = %node, method = %req.method(), path = %rest);
            let started = Instant::now();
            let node = node.to_owned();
            let rest = rest.to_owned();
            let response = async {
                match proxy(&shared, req, &node, &rest, request_id).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        debug!(error = %e, source = ?e.source_side(), "request failed");
                        e.into_response()
                    }
                }
            }
            .instrument(span)
            .await;
            shared.metrics.request_duration.observe(started.elapsed().as_secs_f64());
            shared
                .metrics
                .requests
                .with_label_values(&[response.status().as_str()])
                .inc();
            return Ok(response);
        }
        Route::NotFound => json_error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path}; Docker API calls go to /nodes/<node-id>/..., the node list is at /v1/nodes"),
        ),
    })
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Drops hop-by-hop headers; upgrade requests keep `Connection` and
/// `Upgrade`, which the daemon needs to hijack the connection.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
    ] {
        headers.remove(name);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Puts the `/nodes/<id>` prefix back on a `Location` that points into the
/// daemon, so a client following it stays on the relay.
fn rewrite_location(headers: &mut HeaderMap, node: &NodeId) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if loc.starts_with('/') && !loc.starts_with("//") {
        if let Ok(v) = HeaderValue::from_str(&format!("/nodes/{node}{loc}")) {
            headers.insert(header::LOCATION, v);
        }
    }
}

async fn proxy(
    shared: &Shared,
    mut req: Request<Incoming>,
    node: &str,
    rest: &str,
    request_id: RequestId,
) -> Result<Response<Body>, FrontError> {
    let node_id = NodeId::new(node).map_err(|_| FrontError::unknown_node(node))?;
    let Some(entry) = shared.sessions.get(&node_id) else {
        return Err(if shared.authority.is_enrolled(&node_id) {
            FrontError::node_offline(&node_id)
        } else {
            FrontError::unknown_node(node)
        });
    };

    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Pipelined: the request follows the header at once; ReplyFirst reads
    // the agent's accept (or refusal) off the stream before the response.
    let setup = async {
        let mut stream = entry.session.open_stream().await.map_err(|e| {
            FrontError::new(
                ErrorSource::Agent,
                format!("node {node_id}'s session failed: {e}"),
            )
        })?;
        let header = StreamHeader {
            version: ProtocolVersion::CURRENT,
            kind: StreamKind::DockerHttp,
            request_id,
            node_id: node_id.clone(),
            traceparent,
        };
        stream
            .write_message(&header, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| {
                FrontError::new(
                    ErrorSource::Agent,
                    format!("node {node_id}'s agent did not take the call: {e}"),
                )
            })?;
        Ok::<_, FrontError>(stream)
    };
    let stream =
        tokio::time::timeout(STREAM_SETUP_TIMEOUT, setup)
            .await
            .map_err(|_| {
                FrontError::new(
            ErrorSource::Agent,
            format!("node {node_id}'s agent did not take the call within {STREAM_SETUP_TIMEOUT:?}"),
        )
            })??;
    let stream = ReplyFirst::new(stream, STREAM_SETUP_TIMEOUT);

    debug!(transport = %entry.session.transport(), "call sent to the agent");
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    *req.uri_mut() = Uri::try_from(path_and_query)
        .map_err(|e| FrontError::new(ErrorSource::Client, format!("invalid request path: {e}")))?;
    strip_hop_by_hop(req.headers_mut(), upgrade);

    let io = TokioIo::new(Counted::new(stream, shared.metrics.clone()));
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(io)
        .await
        .map_err(|e| {
            FrontError::new(
                ErrorSource::Internal,
                format!("cannot start HTTP on the stream: {e}"),
            )
        })?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "node connection ended with an error");
            }
        }
        .in_current_span(),
    );
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| setup_failure(&node_id, &e))?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let node_upgrade = hyper::upgrade::on(&mut resp);
        match client_upgrade {
            Some(client_upgrade) => {
                tokio::spawn(splice_upgraded(client_upgrade, node_upgrade).in_current_span());
            }
            None => {
                return Err(FrontError::new(
                    ErrorSource::Daemon,
                    "the daemon switched protocols on a request that did not ask to upgrade",
                ))
            }
        }
    }
    rewrite_location(resp.headers_mut(), &node_id);
    Ok(resp.map(|b| b.boxed()))
}

/// The error for a call that failed before the daemon answered.
fn setup_failure(node_id: &NodeId, err: &hyper::Error) -> FrontError {
    match find_setup_error(err) {
        Some(SetupError::Refused {
            code: StreamErrorCode::DaemonUnreachable,
            message,
        }) => FrontError::new(
            ErrorSource::Daemon,
            format!("node {node_id}: the Docker daemon is unreachable: {message}"),
        ),
        Some(SetupError::Refused { code, message }) => FrontError::new(
            ErrorSource::Agent,
            format!("node {node_id}'s agent refused the call ({code:?}): {message}"),
        ),
        Some(other) => FrontError::new(ErrorSource::Agent, format!("node {node_id}: {other}")),
        None => FrontError::new(
            ErrorSource::Agent,
            format!("node {node_id}: the call failed before the daemon answered: {err}"),
        ),
    }
}

/// Pipes bytes between a hijacked client connection and the hijacked node
/// stream. Each direction ends on its own: a client that half-closes still
/// receives everything the node sends after.
async fn splice_upgraded(client: hyper::upgrade::OnUpgrade, node: hyper::upgrade::OnUpgrade) {
    let (client, node) = match tokio::try_join!(client, node) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut node = TokioIo::new(node);
    match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut node, 64 * 1024, 64 * 1024)
        .await
    {
        Ok((up, down)) => debug!(
            bytes_to_node = up,
            bytes_from_node = down,
            "hijacked stream finished"
        ),
        Err(e) => debug!(error = %e, "hijacked stream failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v1/nodes"), Route::NodeList);
        assert_eq!(route("/v1/nodes/a"), Route::NodeInfo("a"));
        assert_eq!(
            route("/nodes/a/v1.45/containers/json"),
            Route::Docker {
                node: "a",
                rest: "/v1.45/containers/json"
            }
        );
        assert_eq!(
            route("/nodes/a"),
            Route::Docker {
                node: "a",
                rest: "/"
            }
        );
        assert_eq!(
            route("/nodes/a//x"),
            Route::Docker {
                node: "a",
                rest: "//x"
            }
        );
        assert_eq!(route("/containers/json"), Route::NotFound);
    }

    #[test]
    fn location_gets_the_node_prefix_back() {
        let node = NodeId::new("n1").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("/v1.45/containers/json"),
        );
        rewrite_location(&mut h, &node);
        assert_eq!(h[header::LOCATION], "/nodes/n1/v1.45/containers/json");
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("https://elsewhere/x"),
        );
        rewrite_location(&mut h, &node);
        assert_eq!(h[header::LOCATION], "https://elsewhere/x");
    }

    #[test]
    fn upgrade_headers_survive_only_on_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade(&h));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert!(kept.contains_key(header::UPGRADE) && !kept.contains_key("keep-alive"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(header::UPGRADE) && !h.contains_key(header::CONNECTION));
    }
}
