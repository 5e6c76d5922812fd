//! A Docker call to one node: route it, take its concurrency slots, make
//! the request the daemon's (node prefix off, hop-by-hop headers and
//! credentials out), hand it to the upstream, and relay the answer: a
//! streamed body, or a hijacked byte pipe for `Connection: Upgrade`.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use tracing::Instrument;
use tunnelgate_proto::{NodeId, NodeKey, RequestId, TenantId};

use super::context::Front;
use crate::audit::CallRecord;
use crate::error::{BusyScope, CallError};
use crate::metrics::Limit;
use crate::respond::Body;
use crate::router::Route;
use crate::upstream::splice::{splice_upgraded, Guarded};
use crate::upstream::{CallBody, KeptStream, Target};

/// Which route carried a call: `direct`, `local`, or `peer=<relay-id>`.
pub const ROUTE_HEADER: &str = "x-tunnelgate-route";

/// Carries one Docker call to `node_id` of `tenant`, with the path `rest`
/// as the daemon sees it: a client's call, or one the relay makes itself
/// (the fleet view's), on the client connection's kept stream `kept`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn proxy(
    front: &Front,
    kept: &KeptStream,
    tenant: &TenantId,
    node_id: NodeId,
    rest: &str,
    mut req: Request<CallBody>,
    request_id: RequestId,
    record: Arc<CallRecord>,
) -> Result<Response<Body>, CallError> {
    let key = NodeKey {
        tenant: tenant.clone(),
        node_id,
    };
    let vias = match front.router.route(&key) {
        Route::Via(vias) => vias,
        Route::Offline => return Err(CallError::NodeOffline(key.node_id)),
        Route::Unknown => return Err(CallError::UnknownNode(key.node_id.to_string())),
    };
    let limits = &front.config.limits;
    // The relay's own calls for the fleet view (an event stream and one
    // listing call at a time per node) grow with the fleet, not with what
    // clients do: counted for the tenant, a fleet of 4,096 nodes would
    // fill its limit, leaving the rest of the view unlisted and every
    // client call refused. They still count for the node.
    let per_tenant = match record.caller().map(|p| &p.credentials) {
        Some(crate::auth::Credentials::Relay) => None,
        _ => Some(limits.max_streams_per_tenant),
    };
    let slots = front
        .slots
        .acquire(&key, limits.max_streams_per_node, per_tenant)
        .map_err(|limit| {
            front.metrics.limit_hit(limit);
            let (scope, max) = match limit {
                Limit::StreamsPerNode => (
                    BusyScope::Node(key.node_id.clone()),
                    limits.max_streams_per_node,
                ),
                _ => (
                    BusyScope::Tenant(key.tenant.clone()),
                    limits.max_streams_per_tenant,
                ),
            };
            CallError::TooBusy { scope, limit, max }
        })?;

    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let target = Target {
        tenant: key.tenant.clone(),
        node_id: key.node_id.clone(),
        request_id,
        // This hop's span in the caller's trace.
        traceparent: Some(record.trace.child(rand::random()).to_string()),
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    *req.uri_mut() = Uri::try_from(path_and_query).map_err(CallError::InvalidPath)?;
    strip_hop_by_hop(req.headers_mut(), upgrade);

    let (mut resp, via) = front
        .tunnel
        .send(&vias, &target, kept, req, upgrade, &record)
        .await?;
    let route = via.name();
    front.metrics.routed(via.kind());
    if let Ok(v) = HeaderValue::from_str(&route) {
        resp.headers_mut().insert(ROUTE_HEADER, v);
    }
    record.set_route(route);
    // The call is over when its last byte is relayed: until then it holds
    // its audit record and its slots.
    // A stream ends when the caller's credential stops standing; a body
    // of a known length is no stream, and is left to finish.
    let streams = resp.status() == StatusCode::SWITCHING_PROTOCOLS
        || http_body::Body::size_hint(resp.body()).exact().is_none();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let cut = match streams {
        true => record.caller().and_then(|p| front.cut_for(p, content_type)),
        false => None,
    };
    let guard = (record, slots);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(CallError::UnaskedUpgrade);
        };
        let node_upgrade = hyper::upgrade::on(&mut resp);
        front.tasks.spawn(
            splice_upgraded(
                client_upgrade,
                node_upgrade,
                guard,
                front.wind_down.clone(),
                cut,
            )
            .in_current_span(),
        );
        return Ok(resp.map(|b| b.boxed()));
    }
    Ok(resp.map(|inner| Guarded::new(inner, guard, front.wind_down.clone(), cut).boxed()))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    tunnelgate_proto::docker_api::is_upgrade(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
        headers.contains_key(header::UPGRADE),
    )
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
/// daemon, so a client following it stays on the relay (for a call that
/// named its node by path).
pub(super) fn rewrite_location(headers: &mut HeaderMap, node: &NodeId) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if loc.starts_with('/') && !loc.starts_with("//") {
        if let Ok(v) = HeaderValue::from_str(&format!("/nodes/{node}{loc}")) {
            headers.insert(header::LOCATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, upgrade"),
        );
        assert!(is_upgrade(&h), "a token among others counts");
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
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
