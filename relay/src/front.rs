//! The HTTP front: where control-plane clients speak the Docker API.
//!
//! Every call gets a request id, is parsed once into what it names
//! ([`routes`]), passes the checks every call passes (header count,
//! credentials through [`crate::auth`], a path that cannot leave its
//! node), and sees only its tenant's nodes: another tenant's node id
//! answers exactly as a node that does not exist. `/v1/nodes[/<id>]`
//! lists connected nodes ([`nodes`]); `/nodes/<node-id>/<docker path>`
//! (or, with a node domain, any path on the host `<node-id>.DOMAIN`,
//! whose TLS server name must agree)
//! asks the router where the node is and hands the call to an upstream
//! ([`docker`]), holding a concurrency slot of the node and of its
//! tenant ([`slots`]). Every call leaves one audit line. The install
//! assets (`/install.sh`, `/ca.pem`, `/download/...`) are public and
//! read-only, and served before any of that ([`install`]); so are the
//! dashboard's static files at `/ui/` ([`ui`]), whose data comes from the
//! authenticated API. `/fleet/...` is one Docker host over every node,
//! its creates placed by [`crate::fleet`] ([`fleet`]), `/v1/events` their events ([`events`]),
//! `POST /v1/tokens` a join token for the caller's tenant ([`tokens`]),
//! `/v1/keys` its API keys and `/v1/whoami` the caller ([`keys`]). Which
//! caller may make which call is decided once, before dispatch, by
//! [`crate::authz`] from the caller's role.
//!
//! The front decides nothing about where a node is, and never touches a
//! session itself.

mod asks;
mod context;
mod docker;
mod events;
mod fleet;
pub mod install;
mod keys;
mod nodes;
mod routes;
mod slots;
mod tokens;
mod ui;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use tracing::{debug, info_span, Instrument};
use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::RequestId;

use context::{new_trace, next_request_id};
pub use context::{ClientConn, Front};
pub use slots::StreamSlots;

use crate::audit::CallRecord;
use crate::auth::{self, Principal};
use crate::authz::{self, Action};
use crate::error::CallError;
use crate::metrics::Limit;
use crate::respond::Body;
use crate::state::credentials::Kind;
use crate::upstream::Direct;
use routes::{check_path, Route};

/// Whether a client connection whose first bytes are `head` runs best on
/// a thread of its own ([`crate::net::Placement`]): its first request
/// names a node this relay reaches over the direct path. A guess from
/// one request line; each call is still routed on its own.
pub fn goes_direct(direct: &Direct, head: &[u8]) -> bool {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let Some(target) = line.split(|b| *b == b' ').nth(1) else {
        return false;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return false;
    };
    let path = target.split('?').next().unwrap_or_default();
    match Route::parse(path) {
        Route::Docker { node: Ok(node), .. } => direct.reaches(&node),
        _ => false,
    }
}

/// Every answer's request id, as the relay's and the agent's log lines
/// show it.
pub const REQUEST_ID_HEADER: &str = "x-tunnelgate-request-id";

/// Answers one control-plane request on connection `conn`.
pub async fn handle(
    front: Arc<Front>,
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    // Under the node domain a call's host may name its node.
    let by_host = match &front.config.node_domain {
        Some(domain) => routes::by_host(
            domain,
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str())),
            conn.meta.server_name.as_deref(),
        ),
        None => Ok(None),
    };
    let named_by_host = matches!(by_host, Ok(Some(_)) | Err(_));
    if let (Some(asset), &Method::GET, false) = (
        install::Asset::parse(req.uri().path()),
        req.method(),
        named_by_host,
    ) {
        let response = front.install.serve(asset, req.headers()).await;
        front
            .metrics
            .requests
            .with_label_values(&[response.status().as_str()])
            .inc();
        return Ok(response);
    }
    if req.method() == Method::GET && !named_by_host {
        if let Some(page) = ui::serve(req.uri().path()) {
            return Ok(page);
        }
    }
    let started = Instant::now();
    let request_id = next_request_id();
    let trace = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .unwrap_or_else(new_trace);
    let (route, misdirected) = match by_host {
        Ok(by_host) => (Route::of(by_host, req.uri().path()), None),
        Err(e) => (Route::NotFound, Some(e)),
    };
    let admitted = admit(&front, &conn, &req);
    let (parts, body) = req.into_parts();
    let record = Arc::new(CallRecord::new(
        request_id,
        trace,
        &parts,
        admitted.as_ref().ok().cloned(),
        route.docker_node().cloned(),
        started,
    ));
    let req = Request::from_parts(parts, body);
    let is_docker = matches!(route, Route::Docker { .. });
    let response = match (admitted, misdirected) {
        (_, Some(e)) => e.into_response(),
        (Ok(principal), None) => {
            let answered = async {
                authorize(&principal, &route, req.method())?;
                dispatch(&front, &conn, principal, route, req, request_id, &record).await
            };
            answered.await.unwrap_or_else(|e| {
                debug!(error = %e, source = ?e.source_side(), "request failed");
                e.into_response()
            })
        }
        (Err(e), None) => e.into_response(),
    };
    let mut response = response;
    if let Ok(v) = http::HeaderValue::from_str(&request_id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    record.set_status(response.status());
    if is_docker {
        front
            .metrics
            .request_duration
            .observe(record.elapsed().as_secs_f64());
    }
    front
        .metrics
        .requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    Ok(response)
}

/// The checks every call passes before it is routed.
fn admit(
    front: &Front,
    conn: &ClientConn,
    req: &Request<Incoming>,
) -> Result<Principal, CallError> {
    let max = front.config.limits.max_headers;
    let count = req.headers().len();
    if count > max {
        front.metrics.limit_hit(Limit::HeaderCount);
        return Err(CallError::TooManyHeaders { count, max });
    }
    let principal = auth::authenticate(
        front.config.api_auth,
        &front.state.api_keys(),
        &front.state.client_certs(),
        conn.meta.client_cert.as_ref(),
        req.headers(),
    )
    .map_err(|failure| {
        front
            .metrics
            .auth_failures
            .with_label_values(&[failure.reason()])
            .inc();
        CallError::Unauthenticated(failure)
    })?;
    check_path(req.uri().path())?;
    match (&principal.credentials, conn.meta.client_cert.as_ref()) {
        (auth::Credentials::ApiKey(id), _) => front.state.uses().note(Kind::ApiKey, id),
        (auth::Credentials::Cert { serial, .. }, _) => {
            front.state.uses().note(Kind::ClientCert, serial)
        }
        _ => {}
    }
    Ok(principal)
}

/// What the call is, as [`authz`] sees it; `None` for a call that is no
/// action of anyone's (an unknown path, a method a route does not take),
/// which dispatch refuses on its own.
fn action_of(route: &Route, method: &Method) -> Option<Action> {
    let get = method == Method::GET;
    Some(match route {
        Route::Docker { rest, .. } => Action::Docker(authz::docker_call(method, rest)),
        Route::Fleet { rest } => Action::Fleet(authz::docker_call(method, rest)),
        Route::NodeList | Route::NodeInfo(_) if get => Action::NodeList,
        Route::Events if get => Action::Events,
        Route::Tokens if method == Method::POST => Action::Tokens,
        Route::Keys | Route::Key(_) => Action::Keys,
        Route::Whoami if get => Action::Whoami,
        _ => return None,
    })
}

/// The one decision of whether the caller may make this call, before
/// anything is sent anywhere.
fn authorize(principal: &Principal, route: &Route, method: &Method) -> Result<(), CallError> {
    match action_of(route, method) {
        Some(action) => Ok(authz::decide(principal, principal.role, action)?),
        None => Ok(()),
    }
}

async fn dispatch(
    front: &Arc<Front>,
    conn: &ClientConn,
    principal: Principal,
    route: Route,
    req: Request<Incoming>,
    request_id: RequestId,
    record: &Arc<CallRecord>,
) -> Result<Response<Body>, CallError> {
    let tenant = &principal.tenant;
    let get = req.method() == Method::GET;
    match route {
        Route::NodeList if get => Ok(nodes::list_or_watch(front, &principal, req.uri().query())),
        Route::Events if get => Ok(events::fan_in(
            front.clone(),
            asks::Caller::new(&principal, record),
            req.uri().query(),
        )),
        Route::Fleet { rest } => {
            let span = info_span!("request", %request_id, %tenant, fleet = true,
                                  trace_id = %record.trace.trace_hex(),
                                  method = %req.method(), path = %rest);
            let caller = asks::Caller::new(&principal, record);
            fleet::serve(front, conn, &caller, &rest, req)
                .instrument(span)
                .await
        }
        Route::NodeInfo(node) if get => nodes::info(front, &principal, node),
        Route::Tokens if req.method() == Method::POST => {
            tokens::create(front, &principal, req.uri().query(), req.headers()).await
        }
        Route::Keys if get => keys::list(front, &principal).await,
        Route::Keys if req.method() == Method::POST => {
            keys::create(front, &principal, req.uri().query()).await
        }
        Route::Key(id) if req.method() == Method::DELETE => {
            keys::revoke(front, &principal, &id).await
        }
        Route::Whoami if get => Ok(keys::whoami(&principal)),
        Route::NodeList
        | Route::NodeInfo(_)
        | Route::Events
        | Route::Tokens
        | Route::Keys
        | Route::Key(_)
        | Route::Whoami => Err(CallError::MethodNotAllowed),
        Route::Docker {
            node,
            rest,
            by_host,
        } => {
            let node_id = node.map_err(CallError::UnknownNode)?;
            // Outside the caller's scope a node answers as a missing one.
            if !front.sees(&principal, &node_id) {
                return Err(CallError::UnknownNode(node_id.to_string()));
            }
            let span = info_span!("request", %request_id, %tenant, %node_id,
                                  trace_id = %record.trace.trace_hex(),
                                  method = %req.method(), path = %rest);
            let mut resp = docker::proxy(
                front,
                &conn.kept,
                tenant,
                node_id.clone(),
                &rest,
                req.map(Either::Left),
                request_id,
                record.clone(),
            )
            .instrument(span)
            .await?;
            if !by_host {
                docker::rewrite_location(resp.headers_mut(), &node_id);
            }
            Ok(resp)
        }
        Route::NotFound => Err(CallError::NoSuchEndpoint(req.uri().path().to_owned())),
    }
}
