//! The calls the relay makes to nodes itself, for the fleet view and the
//! events fan-in: each goes through [`super::docker::proxy`] like a
//! client's, for the caller of the view ([`Caller`]), so it takes the
//! caller's slots, leaves an audit line as theirs and is in their trace.
//! Nothing here knows what the answers are for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Either, Full};
use serde_json::Value;
use tracing::{info_span, Instrument};
use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::{NodeId, TenantId};

use super::context::{new_trace, next_request_id, Front};
use super::docker;
use crate::audit::CallRecord;
use crate::auth::Principal;
use crate::error::CallError;
use crate::respond::Body;
use crate::upstream::{CallBody, KeptStream};

/// How long one node may take to answer a fleet view in full.
const NODE_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Whom the relay's own calls to nodes are for: the caller of the fleet
/// view, with its trace, so each call is audited and traced as theirs.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    principal: Principal,
    trace: TraceParent,
}

impl Caller {
    /// The caller of the call `record` is of.
    pub(super) fn new(principal: &Principal, record: &CallRecord) -> Self {
        Self {
            principal: principal.clone(),
            trace: record.trace,
        }
    }

    /// The relay itself, keeping the fleet view of `tenant`, in a trace
    /// of its own.
    pub(super) fn relay(tenant: &TenantId) -> Self {
        Self {
            principal: Principal {
                tenant: tenant.clone(),
                credentials: crate::auth::Credentials::Relay,
                // Its own view's reads; a caller's calls are decided as theirs.
                role: crate::authz::Role::Admin,
                scope: crate::scope::Scope::all(),
                expires_at: None,
            },
            trace: new_trace(),
        }
    }

    pub(super) fn tenant(&self) -> &TenantId {
        &self.principal.tenant
    }

    /// Who is calling.
    pub(super) fn principal(&self) -> &Principal {
        &self.principal
    }
}

/// A GET the relay makes itself to `node` for `caller` (audited as
/// theirs, counted in their slots): the answer's head, its body streamed.
pub(super) async fn ask(
    front: &Front,
    caller: &Caller,
    node: &NodeId,
    path_and_query: &str,
) -> Result<Response<Body>, CallError> {
    let no_headers = http::HeaderMap::new();
    let get = http::Method::GET;
    send(
        front,
        caller,
        node,
        get,
        path_and_query,
        &no_headers,
        Bytes::new(),
    )
    .await
}

/// A call the relay makes to `node` for `caller` with a body in full:
/// `method` on `path_and_query`, with `headers` (the client's, for the
/// fleet's own calls: content type, registry auth; its length and
/// framing are the new body's).
pub(super) async fn send(
    front: &Front,
    caller: &Caller,
    node: &NodeId,
    method: http::Method,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, CallError> {
    let (rest, req) = request(method, path_and_query, headers, body)?;
    carry(
        front,
        &KeptStream::default(),
        caller,
        node.clone(),
        &rest,
        req,
    )
    .await
}

/// One of the relay's own event streams from `node` for `caller`, as
/// [`ask`] would carry it but read without an HTTP client connection of
/// its own ([`crate::upstream::lean`]), since the fleet keeps one open
/// per node. Its body may end early, without an error: the reader
/// must take any end as a gap.
pub(super) async fn watch(
    front: &Front,
    caller: &Caller,
    node: &NodeId,
    path_and_query: &str,
) -> Result<Response<Body>, CallError> {
    let no_headers = http::HeaderMap::new();
    let (rest, mut req) = request(http::Method::GET, path_and_query, &no_headers, Bytes::new())?;
    req.extensions_mut().insert(crate::upstream::Watch);
    carry(
        front,
        &KeptStream::default(),
        caller,
        node.clone(),
        &rest,
        req,
    )
    .await
}

/// A request of the relay's own, and its path.
fn request(
    method: http::Method,
    path_and_query: &str,
    headers: &http::HeaderMap,
    body: Bytes,
) -> Result<(String, Request<CallBody>), CallError> {
    let uri = Uri::try_from(path_and_query).map_err(CallError::InvalidPath)?;
    let rest = uri.path().to_owned();
    let mut req = Request::new(Either::Right(Full::new(body)));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in headers {
        if name != http::header::CONTENT_LENGTH && name != http::header::TRANSFER_ENCODING {
            req.headers_mut().append(name, value.clone());
        }
    }
    req.headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("docker"));
    Ok((rest, req))
}

/// The sentence of a Docker-style error body (`{"message": ...}`), or the
/// body itself when it is not one.
pub(super) fn docker_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| Some(v.get("message")?.as_str()?.to_owned()))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Carries one call of `caller` to `node` with the Docker path `rest`,
/// with its own request id, span and audit line, in the caller's trace.
pub(super) async fn carry(
    front: &Front,
    kept: &KeptStream,
    caller: &Caller,
    node: NodeId,
    rest: &str,
    req: Request<CallBody>,
) -> Result<Response<Body>, CallError> {
    // What the fleet lists is filtered by the caller's scope already; a
    // node this call names some other way is refused here all the same.
    if !front.sees(&caller.principal, &node) {
        return Err(CallError::UnknownNode(node.to_string()));
    }
    let request_id = next_request_id();
    let (parts, body) = req.into_parts();
    let record = Arc::new(CallRecord::new(
        request_id,
        caller.trace,
        &parts,
        Some(caller.principal.clone()),
        Some(node.clone()),
        Instant::now(),
    ));
    let span = info_span!("request", %request_id, tenant = %caller.tenant(), node_id = %node,
                          trace_id = %caller.trace.trace_hex(),
                          method = %parts.method, path = %rest, by = "fleet");
    let req = Request::from_parts(parts, body);
    let answer = docker::proxy(
        front,
        kept,
        caller.tenant(),
        node.clone(),
        rest,
        req,
        request_id,
        record.clone(),
    )
    .instrument(span)
    .await
    .map(|mut resp| {
        docker::rewrite_location(resp.headers_mut(), &node);
        resp
    });
    record.set_status(match &answer {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    });
    answer
}

/// [`ask`], answered in full within [`NODE_ANSWER_TIMEOUT`], as JSON.
pub(super) async fn ask_json(
    front: &Front,
    caller: &Caller,
    node: &NodeId,
    path_and_query: &str,
) -> Result<Value, CallError> {
    let failed = |status, reason: String| CallError::FleetAnswer {
        node: node.clone(),
        status,
        reason,
    };
    let resp = ask(front, caller, node, path_and_query).await?;
    let status = resp.status();
    let body = tokio::time::timeout(NODE_ANSWER_TIMEOUT, resp.into_body().collect())
        .await
        .map_err(|_| {
            failed(
                None,
                format!("no whole answer within {NODE_ANSWER_TIMEOUT:?}"),
            )
        })?
        .map_err(|e| failed(None, format!("the answer broke off: {e}")))?
        .to_bytes();
    if !status.is_success() {
        let message = docker_message(&body);
        return Err(failed(Some(status), format!("{status}: {message}")));
    }
    serde_json::from_slice(&body)
        .map_err(|e| failed(Some(status), format!("the answer is not JSON: {e}")))
}
