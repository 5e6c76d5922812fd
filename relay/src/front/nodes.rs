//! The node list API: `GET /v1/nodes` and `GET /v1/nodes/<id>`, the
//! caller's tenant's connected nodes as JSON, each with the route this
//! relay takes to it and its direct endpoints' health. With `?all=1` the
//! list is the whole fleet, each node with its `status` (`connected`,
//! `daemon unreachable`, `offline`) and the relay that holds it (a peer's
//! nodes with the facts the peer shares through the registry); with
//! `&watch=1` it is a stream of server-sent events, the whole list again
//! whenever it changes (what the dashboard shows live).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::context::Front;
use super::routes::query_pairs;
use crate::auth::Principal;
use crate::error::CallError;
use crate::respond::{json, Body, ChannelBody};
use crate::router::Held;
use crate::sessions::NodeView;
use crate::upstream::direct::EndpointView;

/// A node as the API shows it.
#[derive(Serialize)]
struct Node {
    #[serde(flatten)]
    view: NodeView,
    /// `direct` while a probe of its daemon port holds, else `tunnel`.
    route: &'static str,
    /// The daemon endpoints it advertised, as this relay's probes found them.
    direct: Vec<EndpointView>,
}

fn with_route(front: &Front, tenant: &TenantId, view: NodeView) -> Node {
    let key = NodeKey {
        tenant: tenant.clone(),
        node_id: view.node_id.clone(),
    };
    Node {
        route: match front.direct.usable(&key) {
            Some(_) => "direct",
            None => "tunnel",
        },
        direct: front.direct.views(&key),
        view,
    }
}

/// The list `query` asks for: this relay's connected nodes, the whole
/// fleet (`all=1`), or the whole fleet live (`all=1&watch=1`).
pub(super) fn list_or_watch(
    front: &Arc<Front>,
    principal: &Principal,
    query: Option<&str>,
) -> Response<Body> {
    let has = |flag: &str| query_pairs(query).any(|(k, v)| k == flag && (v == "1" || v == "true"));
    match (has("all"), has("watch")) {
        (true, true) => watch(front.clone(), principal.clone()),
        (true, false) => json(
            StatusCode::OK,
            Value::Array(fleet(front, principal)).to_string(),
        ),
        _ => list(front, principal),
    }
}

/// Every node of the tenant in the caller's scope, sorted by id: this
/// relay's with all it knows, a peer's and the offline ones with their
/// status and holder.
fn fleet(front: &Front, principal: &Principal) -> Vec<Value> {
    let tenant = &principal.tenant;
    front
        .fleet_of(principal)
        .into_iter()
        .map(|(node_id, held)| {
            let key = NodeKey {
                tenant: tenant.clone(),
                node_id: node_id.clone(),
            };
            let local = match held {
                Held::Here => front.sessions.get(&key),
                _ => None,
            };
            match (local, held) {
                (Some(entry), _) => {
                    let node = with_route(front, tenant, entry.view(front.state.relay_id()));
                    let status = match node.view.daemon_reachable {
                        true => "connected",
                        false => "daemon unreachable",
                    };
                    let mut v = serde_json::to_value(&node).expect("views serialize");
                    v["status"] = Value::String(status.into());
                    v
                }
                // As its holder shares it; direct from here when this
                // relay's probe of its daemon holds, else through the holder.
                (None, Held::Peer(relay)) => {
                    let shared = front.router.peer_view(&key);
                    let status = match shared.as_ref().map(|v| v.daemon_reachable) {
                        Some(false) => "daemon unreachable",
                        _ => "connected",
                    };
                    let mut v = shared
                        .and_then(|view| serde_json::to_value(view).ok())
                        .unwrap_or_else(|| json!({"node_id": node_id}));
                    v["status"] = json!(status);
                    v["route"] = json!(match front.direct.usable(&key) {
                        Some(_) => "direct",
                        None => "peer",
                    });
                    v["direct"] = json!(front.direct.views(&key));
                    v["relay_id"] = json!(relay);
                    v
                }
                (None, _) => json!({"node_id": node_id, "status": "offline"}),
            }
        })
        .collect()
}

/// How often the live list looks for changes, and how long it stays
/// silent at most (a comment line keeps proxies from closing it).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The whole fleet as server-sent events: `event: nodes` with the list,
/// at once and on every change.
fn watch(front: Arc<Front>, principal: Principal) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let tasks = front.tasks.clone();
    tasks.spawn(async move {
        let mut sent: Option<String> = None;
        let mut quiet_since = Instant::now();
        let mut ticker = tokio::time::interval(WATCH_INTERVAL);
        // The stream ends when the caller's credential stops standing.
        let cut = front.cut_for(&principal, Some("application/json"));
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                break;
            }
            if let Some(cut) = cut.as_ref().filter(|c| c.token.is_cancelled()) {
                if let Some(word) = (cut.last_word)(&[]) {
                    let text = String::from_utf8_lossy(&word).trim_end().to_owned();
                    let _ = tx
                        .send(Bytes::from(format!("event: ended\ndata: {text}\n\n")))
                        .await;
                }
                break;
            }
            let now = Value::Array(fleet(&front, &principal)).to_string();
            let frame = if sent.as_deref() != Some(now.as_str()) {
                format!("event: nodes\ndata: {now}\n\n")
            } else if quiet_since.elapsed() >= KEEPALIVE {
                ": still here\n\n".to_owned()
            } else {
                continue;
            };
            match tx.try_send(Bytes::from(frame)) {
                Ok(()) => {
                    sent = Some(now);
                    quiet_since = Instant::now();
                }
                // A slow reader gets the latest list once it catches up.
                Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache")
        .body(ChannelBody::boxed_body(rx, Arc::default()))
        .expect("static response parts are valid")
}

/// The tenant's connected nodes in the caller's scope, sorted by node id.
fn list(front: &Front, principal: &Principal) -> Response<Body> {
    let tenant = &principal.tenant;
    let nodes: Vec<Node> = front
        .sessions
        .views(tenant, front.state.relay_id())
        .into_iter()
        .filter(|v| principal.scope.admits(v.node_id.as_str(), &v.labels))
        .map(|v| with_route(front, tenant, v))
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_string(&nodes).expect("views serialize"),
    )
}

/// One of the tenant's connected nodes.
pub(super) fn info(
    front: &Front,
    principal: &Principal,
    node: Result<NodeId, String>,
) -> Result<Response<Body>, CallError> {
    let tenant = &principal.tenant;
    let node_id = node.map_err(CallError::UnknownNode)?;
    if !front.sees(principal, &node_id) {
        return Err(CallError::UnknownNode(node_id.to_string()));
    }
    let key = NodeKey {
        tenant: tenant.clone(),
        node_id,
    };
    let entry = front
        .sessions
        .get(&key)
        .ok_or_else(|| CallError::UnknownNode(key.node_id.to_string()))?;
    let node = with_route(front, tenant, entry.view(front.state.relay_id()));
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&node).expect("view serializes"),
    ))
}
