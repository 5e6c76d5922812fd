//! The node list API: `GET /v1/nodes` and `GET /v1/nodes/<id>`, the
//! caller's tenant's connected nodes as JSON, each with the route this
//! relay takes to it and its direct endpoints' health.

use http::{Response, StatusCode};
use serde::Serialize;
use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::Front;
use crate::error::CallError;
use crate::respond::{json, Body};
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

/// The tenant's connected nodes, sorted by node id.
pub(super) fn list(front: &Front, tenant: &TenantId) -> Response<Body> {
    let nodes: Vec<Node> = front
        .sessions
        .views(tenant, front.state.relay_id())
        .into_iter()
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
    tenant: &TenantId,
    node: Result<NodeId, String>,
) -> Result<Response<Body>, CallError> {
    let node_id = node.map_err(CallError::UnknownNode)?;
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
