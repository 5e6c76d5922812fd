//! The HTTP front: where control-plane clients speak the Docker API.
//!
//! Every call is authenticated ([`crate::auth`]) and sees only its
//! tenant's nodes: another tenant's node id answers exactly as a node that
//! does not exist. `/nodes/<node-id>/<docker path>` goes to that node with
//! the prefix stripped; `/v1/nodes[/<id>]` lists connected nodes. Paths
//! with dot-segments or encoded slashes are refused before routing, and
//! each call holds a concurrency slot of its node and its tenant. Every
//! call leaves one audit line ([`crate::audit`]). For each Docker call
//! the front opens one stream on the node's session, exchanges the stream
//! header, then speaks HTTP/1.1 over it to the daemon behind the agent.
//! Bodies stream both ways as they are produced, and `Connection: Upgrade`
//! hijacks (attach, exec) become a byte pipe with half-close carried
//! through.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{debug, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{StreamErrorCode, StreamHeader, StreamKind};
use tunnelgate_proto::{NodeId, ProtocolVersion, RequestId, TenantId};

use crate::audit::CallRecord;
use crate::auth::{self, ConnInfo, Principal};
use crate::error::{ErrorSource, FrontError};
use crate::identity::NodeKey;
use crate::io::{CallStream, StreamBytes};
use crate::reply::{find_setup_error, ReplyFirst, SetupError};
use crate::sessions::Entry;
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

/// Refuses paths that could mean something else after normalisation:
/// dot-segments, encoded slashes, backslashes and NULs, plain or
/// percent-encoded. No Docker API path needs them, and refusing them
/// means no spelling of a path can leave the node it names.
fn check_path(path: &str) -> Result<(), FrontError> {
    let lower = path.to_ascii_lowercase();
    let encoded_separator = ["%2f", "%5c", "%00", "\\"]
        .iter()
        .any(|bad| lower.contains(bad));
    let dot_segment = lower.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if encoded_separator || dot_segment {
        return Err(FrontError::new(
            ErrorSource::Client,
            "the request path holds dot-segments ('.', '..') or encoded separators (%2F, %5C, %00), \
             which the relay refuses; send the plain path, e.g. /nodes/<node-id>/v1.45/containers/json",
        ));
    }
    Ok(())
}

/// Answers one control-plane request on connection `conn`.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let request_id = next_request_id();
    let mut record = CallRecord::new(request_id, req.method().as_str(), req.uri().path());
    let response = match admit(&shared, &conn, &req) {
        Ok(principal) => {
            record.tenant = principal.tenant.to_string();
            record.principal = principal.name.clone();
            route_call(&shared, &conn, principal, req, record).await
        }
        Err(e) => {
            let resp = e.into_response();
            record.set_status(resp.status());
            resp
        }
    };
    shared
        .metrics
        .requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    Ok(response)
}

/// The checks every call passes before it is routed.
fn admit(
    shared: &Shared,
    conn: &ConnInfo,
    req: &Request<Incoming>,
) -> Result<Principal, FrontError> {
    let limits = &shared.config.limits;
    if req.headers().len() > limits.max_headers {
        shared.metrics.limit_hit("header_count");
        return Err(FrontError::new(
            ErrorSource::HeaderFields,
            format!(
                "the request has {} header fields; the relay accepts at most {} (max_headers)",
                req.headers().len(),
                limits.max_headers
            ),
        ));
    }
    let principal = auth::authenticate(
        shared.config.api_auth,
        &shared.api_keys,
        conn,
        req.headers(),
        &shared.metrics,
    )?;
    check_path(req.uri().path())?;
    Ok(principal)
}

async fn route_call(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    principal: Principal,
    req: Request<Incoming>,
    mut record: CallRecord,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let tenant = &principal.tenant;
    let response = match route(&path) {
        Route::NodeList if req.method() == Method::GET => {
            let views = shared.sessions.views(tenant, shared.authority.relay_id());
            json_response(StatusCode::OK, serde_json::to_string(&views).expect("views serialize"))
        }
        Route::NodeInfo(id) if req.method() == Method::GET => {
            let entry = NodeId::new(id).ok().and_then(|n| shared.sessions.get_in(tenant, &n));
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
            record.node = node.to_owned();
            let span = info_span!("request", request_id = %record.request_id, %tenant, node_id = %node, method = %req.method(), path = %rest);
            let rest = rest.to_owned();
            let node = node.to_owned();
            let record = Arc::new(record);
            let response = async {
                match proxy(shared, conn, tenant, req, &node, &rest, record.clone()).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        debug!(error = %e, source = ?e.source_side(), "request failed");
                        e.into_response()
                    }
                }
            }
            .instrument(span)
            .await;
            shared.metrics.request_duration.observe(record.elapsed().as_secs_f64());
            record.set_status(response.status());
            return response;
        }
        Route::NotFound => json_error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint {path}; Docker API calls go to /nodes/<node-id>/..., the node list is at /v1/nodes"),
        ),
    };
    record.set_status(response.status());
    response
}

/// Calls in flight per node and per tenant, against the configured limits.
#[derive(Debug, Default)]
pub struct StreamSlots {
    per_node: DashMap<NodeKey, usize>,
    per_tenant: DashMap<TenantId, usize>,
}

/// The slots one call holds; released when dropped.
pub struct Slots {
    table: Arc<StreamSlots>,
    key: NodeKey,
}

impl StreamSlots {
    /// Takes a slot of `key`'s node and of its tenant, or names the limit
    /// that is reached.
    fn acquire(
        self: &Arc<Self>,
        key: &NodeKey,
        per_node: usize,
        per_tenant: usize,
    ) -> Result<Slots, &'static str> {
        if !take(&self.per_tenant, &key.tenant, per_tenant) {
            return Err("streams_per_tenant");
        }
        if !take(&self.per_node, key, per_node) {
            give_back(&self.per_tenant, &key.tenant);
            return Err("streams_per_node");
        }
        Ok(Slots {
            table: self.clone(),
            key: key.clone(),
        })
    }
}

fn take<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, k: &K, max: usize) -> bool {
    let mut n = map.entry(k.clone()).or_insert(0);
    if *n >= max {
        return false;
    }
    *n += 1;
    true
}

fn give_back<K: std::hash::Hash + Eq>(map: &DashMap<K, usize>, k: &K) {
    if let Some(mut n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
    }
    // Idle nodes and tenants leave no entry behind.
    map.remove_if(k, |_, n| *n == 0);
}

impl Drop for Slots {
    fn drop(&mut self) {
        give_back(&self.table.per_node, &self.key);
        give_back(&self.table.per_tenant, &self.key.tenant);
    }
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

/// Drops hop-by-hop headers and the caller's credentials (the node must
/// never see a tenant's API key); upgrade requests keep `Connection` and
/// `Upgrade`, which the daemon needs to hijack the connection.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    for name in [
        "authorization",
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

/// The HTTP/1.1 client end of one stream to a node.
type NodeSender = hyper::client::conn::http1::SendRequest<Incoming>;

/// How long a kept stream may take to finish its previous call before a
/// new stream is opened instead. Calls on one client connection come one
/// after another, so the wait is normally nil.
const KEPT_STREAM_WAIT: Duration = Duration::from_millis(100);

/// The node stream a client connection's last call went over, kept so the
/// connection's next call to the same node skips the stream setup: no new
/// stream, no new daemon connection at the agent, no HTTP handshake. This
/// is what makes a kept-alive `docker` client's calls cheap. Upgraded
/// calls never leave their stream behind; the stream closes with the
/// client connection.
#[derive(Default)]
pub struct KeptStream(std::sync::Mutex<Option<Kept>>);

struct Kept {
    key: NodeKey,
    session: u64,
    sender: NodeSender,
    bytes: Arc<StreamBytes>,
}

impl std::fmt::Debug for KeptStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptStream").finish_non_exhaustive()
    }
}

impl KeptStream {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept stream, if it goes to `key`'s node over session `session`
    /// and is free for another call.
    async fn take(&self, key: &NodeKey, session: u64) -> Option<(NodeSender, Arc<StreamBytes>)> {
        let kept = self.slot().take()?;
        if kept.key != *key || kept.session != session {
            return None;
        }
        let mut sender = kept.sender;
        match tokio::time::timeout(KEPT_STREAM_WAIT, sender.ready()).await {
            Ok(Ok(())) => Some((sender, kept.bytes)),
            _ => None,
        }
    }

    fn keep(&self, kept: Kept) {
        *self.slot() = Some(kept);
    }
}

/// What a call holds until its last byte is relayed: its audit record and
/// its concurrency slots.
struct CallGuard {
    _record: Arc<CallRecord>,
    _slots: Slots,
}

/// A response body from the node that releases its call when it ends.
struct CallBody {
    inner: Incoming,
    guard: Option<CallGuard>,
}

impl hyper::body::Body for CallBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn proxy(
    shared: &Shared,
    conn: &ConnInfo,
    tenant: &TenantId,
    mut req: Request<Incoming>,
    node: &str,
    rest: &str,
    record: Arc<CallRecord>,
) -> Result<Response<Body>, FrontError> {
    let node_id = NodeId::new(node).map_err(|_| FrontError::unknown_node(node))?;
    let key = NodeKey {
        tenant: tenant.clone(),
        node_id: node_id.clone(),
    };
    // Only the caller's tenant is looked in: another tenant's node is
    // simply not there, so it answers as a missing one does.
    let Some(entry) = shared.sessions.get(&key) else {
        return Err(if shared.authority.is_enrolled(&key) {
            FrontError::node_offline(&node_id)
        } else {
            FrontError::unknown_node(node)
        });
    };
    let limits = &shared.config.limits;
    let slots = shared
        .slots
        .acquire(&key, limits.max_streams_per_node, limits.max_streams_per_tenant)
        .map_err(|limit| {
            shared.metrics.limit_hit(limit);
            let (what, max) = if limit == "streams_per_node" {
                (format!("node {node_id}"), limits.max_streams_per_node)
            } else {
                (format!("tenant {tenant}"), limits.max_streams_per_tenant)
            };
            FrontError::new(
                ErrorSource::TooBusy,
                format!("{what} already has {max} calls in flight (max_{limit}); retry when some have finished"),
            )
        })?;

    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    *req.uri_mut() = Uri::try_from(path_and_query)
        .map_err(|e| FrontError::new(ErrorSource::Client, format!("invalid request path: {e}")))?;
    strip_hop_by_hop(req.headers_mut(), upgrade);

    let open = || {
        open_stream(
            shared,
            &entry,
            &node_id,
            record.request_id,
            traceparent.clone(),
        )
    };
    let kept = match upgrade {
        true => None,
        false => conn.node_stream.take(&key, entry.serial()).await,
    };
    let reused = kept.is_some();
    let (mut sender, mut bytes) = match kept {
        Some(kept) => kept,
        None => open().await?,
    };
    record.count_on(&bytes);
    let mut resp = match sender.try_send_request(req).await {
        Ok(resp) => resp,
        Err(mut e) => match e.take_message() {
            // A kept stream that died between calls (its agent reconnected,
            // its idle timer fired) took nothing: send on a fresh one.
            Some(req) if reused => {
                debug!(error = %e.error(), "kept stream failed; opening a new one");
                (sender, bytes) = open().await?;
                record.count_on(&bytes);
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| setup_failure(&node_id, &e))?
            }
            _ => return Err(setup_failure(&node_id, e.error())),
        },
    };
    let guard = CallGuard {
        _record: record,
        _slots: slots,
    };
    rewrite_location(resp.headers_mut(), &node_id);

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let node_upgrade = hyper::upgrade::on(&mut resp);
        match client_upgrade {
            Some(client_upgrade) => {
                tokio::spawn(
                    splice_upgraded(client_upgrade, node_upgrade, guard).in_current_span(),
                );
            }
            None => {
                return Err(FrontError::new(
                    ErrorSource::Daemon,
                    "the daemon switched protocols on a request that did not ask to upgrade",
                ))
            }
        }
        return Ok(resp.map(|b| b.boxed()));
    }
    if !upgrade {
        conn.node_stream.keep(Kept {
            key,
            session: entry.serial(),
            sender,
            bytes,
        });
    }
    Ok(resp.map(|inner| {
        CallBody {
            inner,
            guard: Some(guard),
        }
        .boxed()
    }))
}

/// Opens a stream to the node, sends the stream header and starts HTTP/1.1
/// on it. Pipelined: the first request follows the header at once;
/// [`ReplyFirst`] reads the agent's accept (or refusal) off the stream
/// before the response.
async fn open_stream(
    shared: &Shared,
    entry: &Entry,
    node_id: &NodeId,
    request_id: RequestId,
    traceparent: Option<String>,
) -> Result<(NodeSender, Arc<StreamBytes>), FrontError> {
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
    let stream = tokio::time::timeout(STREAM_SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| {
            FrontError::new(
                ErrorSource::Agent,
                format!(
                    "node {node_id}'s agent did not take the call within {STREAM_SETUP_TIMEOUT:?}"
                ),
            )
        })??;
    debug!(transport = %entry.session.transport(), "stream opened to the agent");
    let stream = CallStream::new(
        ReplyFirst::new(stream, STREAM_SETUP_TIMEOUT),
        shared.metrics.clone(),
        shared.config.limits.idle_stream_timeout,
    );
    let bytes = stream.bytes();
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(TokioIo::new(stream))
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
    Ok((sender, bytes))
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
async fn splice_upgraded(
    client: hyper::upgrade::OnUpgrade,
    node: hyper::upgrade::OnUpgrade,
    _call: CallGuard,
) {
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
    fn paths_that_could_leave_their_node_are_refused() {
        for bad in [
            "/nodes/a/../b/_ping",
            "/nodes/a/%2e%2e/b/_ping",
            "/nodes/a/%2E./b",
            "/nodes/a%2fb/_ping",
            "/nodes/a/x%2F..%2Fb",
            "/nodes/a/./_ping",
            "/nodes/a\\..\\b",
            "/nodes/a/%00",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/nodes/a/_ping",
            "/nodes/a/v1.45/images/library/busybox:1.36/json",
            "/nodes/a/v1.45/containers/my..name/json",
            "/v1/nodes",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
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
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tgkey1.x.y"),
        );
        assert!(is_upgrade(&h));
        let mut kept = h.clone();
        strip_hop_by_hop(&mut kept, true);
        assert!(kept.contains_key(header::UPGRADE) && !kept.contains_key("keep-alive"));
        assert!(
            !kept.contains_key(header::AUTHORIZATION),
            "credentials never reach the node"
        );
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key(header::UPGRADE) && !h.contains_key(header::CONNECTION));
    }
}
