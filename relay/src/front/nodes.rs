//! The node list API: `GET /v1/nodes` and `GET /v1/nodes/<id>`, the
//! caller's tenant's connected nodes as JSON.

use http::{Response, StatusCode};
use tunnelgate_proto::{NodeId, NodeKey, TenantId};

use super::Front;
use crate::error::CallError;
use crate::respond::{json, Body};

/// The tenant's connected nodes, sorted by node id.
pub(super) fn list(front: &Front, tenant: &TenantId) -> Response<Body> {
    let views = front.sessions.views(tenant, front.state.relay_id());
    json(
        StatusCode::OK,
        serde_json::to_string(&views).expect("views serialize"),
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
    let view = entry.view(front.state.relay_id());
    Ok(json(
        StatusCode::OK,
        serde_json::to_string(&view).expect("view serializes"),
    ))
}
