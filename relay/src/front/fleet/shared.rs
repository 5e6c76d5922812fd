//! What the fleet's HTTP adapter and its parts share: the context of a
//! call, the headers the fleet adds, asking every node at once, and the
//! small rewrites of node answers (a node's label, a query string).
//! Below every other file of the adapter; it imports none of them.

use std::sync::Arc;

use http::{HeaderValue, Response};
use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tunnelgate_proto::NodeId;

use super::super::asks::{ask_json, Caller};
use super::super::context::{ClientConn, Front};
use crate::fleet::cache::TenantView;
use crate::fleet::index::Index;
use crate::fleet::view::Node;
use crate::respond::Body;

/// Nodes a fleet view skipped, and why.
pub(super) const SKIPPED_HEADER: &str = "x-tunnelgate-skipped";

/// The node a fleet call was placed on or routed to.
pub(super) const NODE_HEADER: &str = "x-tunnelgate-node";

/// What a fleet call works with.
pub(super) struct Ctx<'a> {
    pub(super) front: &'a Arc<Front>,
    pub(super) conn: &'a ClientConn,
    pub(super) caller: &'a Caller,
    pub(super) view: Arc<TenantView>,
    /// The API version prefix the client used (`/v1.41`), or empty.
    pub(super) version: &'a str,
}

impl Ctx<'_> {
    /// Whether the caller sees node `n` (it is in the caller's scope).
    /// An unscoped caller's answer reads nothing of the node: over
    /// 10,000 nodes, reaching each node's id and labels is a cache miss
    /// apiece on every create's placement.
    pub(super) fn sees(&self, n: &Node) -> bool {
        let scope = &self.caller.principal().scope;
        scope.is_all() || scope.admits(n.id.as_str(), &n.labels)
    }

    /// The nodes of the view the caller sees.
    pub(super) fn nodes(&self) -> Vec<Arc<Node>> {
        let mut nodes = self.view.nodes();
        nodes.retain(|n| self.sees(n));
        nodes
    }

    /// Runs `f` over every node of the view and its index, borrowed
    /// ([`TenantView::with_nodes`]); `f` must keep to the nodes the caller
    /// [sees](Self::sees).
    pub(super) fn with_nodes<R>(&self, f: impl FnOnce(&[&Node], &Index) -> R) -> R {
        self.view.with_nodes(f)
    }

    /// Node `id` of the view, if the caller sees it.
    pub(super) fn node(&self, id: &NodeId) -> Option<Arc<Node>> {
        self.view.node(id).filter(|n| self.sees(n))
    }
}

/// The online node that has container `id`, asking them all at once.
pub(super) async fn locate(front: &Arc<Front>, caller: &Caller, id: &str) -> Option<NodeId> {
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return None;
    }
    ask_all(front, caller, &format!("/containers/{id}/json"))
        .await
        .into_iter()
        .find(|p| p.answer.is_ok())
        .map(|p| p.node)
}

/// One node's part of a fleet view.
pub(super) struct Part {
    pub(super) node: NodeId,
    pub(super) answer: Result<Value, String>,
}

/// Asks every online node of the caller's tenant for `path` at once; the
/// offline ones answer `Err("offline")` without a call.
pub(super) async fn ask_all(front: &Arc<Front>, caller: &Caller, path: &str) -> Vec<Part> {
    let mut calls = JoinSet::new();
    let mut parts = Vec::new();
    for (node, held) in front.fleet_of(caller.principal()) {
        if !held.is_online() {
            parts.push(Part {
                node,
                answer: Err("offline".to_owned()),
            });
            continue;
        }
        let (front, caller, path) = (front.clone(), caller.clone(), path.to_owned());
        calls.spawn(async move {
            let answer = ask_json(&front, &caller, &node, &path).await;
            Part {
                node,
                answer: answer.map_err(|e| e.to_string()),
            }
        });
    }
    while let Some(done) = calls.join_next().await {
        if let Ok(part) = done {
            parts.push(part);
        }
    }
    parts.sort_by(|a, b| a.node.cmp(&b.node));
    parts
}

/// Says which nodes a view left out, in a header.
pub(super) fn with_skipped(resp: Response<Body>, parts: &[Part]) -> Response<Body> {
    let skipped: Vec<(NodeId, String)> = parts
        .iter()
        .filter_map(|p| Some((p.node.clone(), p.answer.as_ref().err()?.clone())))
        .collect();
    with_skipped_names(resp, &skipped)
}

/// How many skipped nodes the header names; it counts the rest. A whole
/// fleet not yet listed would otherwise make a header of megabytes, more
/// than any HTTP client reads.
const SKIPPED_NAMED: usize = 10;

/// Names the nodes a view left out, and why, in a header.
pub(super) fn with_skipped_names(
    mut resp: Response<Body>,
    skipped: &[(NodeId, String)],
) -> Response<Body> {
    let mut named: Vec<String> = skipped
        .iter()
        .take(SKIPPED_NAMED)
        .map(|(node, why)| format!("{node} ({why})"))
        .collect();
    if named.is_empty() {
        return resp;
    }
    if skipped.len() > SKIPPED_NAMED {
        named.push(format!(
            "and {} more (GET /v1/nodes lists every node's state)",
            skipped.len() - SKIPPED_NAMED
        ));
    }
    let text: String = named
        .join(", ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().insert(SKIPPED_HEADER, v);
    }
    resp
}

pub(super) fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// Every node's list in one, each item labelled with its node and the
/// strings in its array field `field` (names, tags) renamed by `rename`
/// where it gives a new one.
pub(super) fn merged(
    parts: &[Part],
    field: &str,
    rename: impl Fn(&NodeId, &str) -> Option<String>,
) -> Vec<Value> {
    let mut all = Vec::new();
    for part in parts {
        let Ok(Value::Array(items)) = &part.answer else {
            continue;
        };
        for item in items {
            let mut item = item.clone();
            if let Some(Value::Array(names)) = item.get_mut(field) {
                for name in names.iter_mut() {
                    if let Some(new) = name.as_str().and_then(|n| rename(&part.node, n)) {
                        *name = Value::String(new);
                    }
                }
            }
            label_node(&mut item, &part.node);
            all.push(item);
        }
    }
    all
}

/// Puts `tunnelgate.node=<id>` in an object's `Labels`.
pub(super) fn label_node(object: &mut Value, node: &NodeId) {
    let Some(obj) = object.as_object_mut() else {
        return;
    };
    let labels = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if labels.is_null() {
        *labels = Value::Object(Map::new());
    }
    if let Some(labels) = labels.as_object_mut() {
        labels.insert("tunnelgate.node".into(), Value::String(node.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use serde_json::json;

    use super::*;
    use crate::respond::json as json_response;

    #[test]
    fn a_node_label_lands_in_null_or_missing_labels() {
        let node = NodeId::new("n1").unwrap();
        for mut v in [
            json!({}),
            json!({"Labels": null}),
            json!({"Labels": {"a": "b"}}),
        ] {
            label_node(&mut v, &node);
            assert_eq!(v["Labels"]["tunnelgate.node"], "n1");
        }
    }

    #[test]
    fn a_fleet_of_skipped_nodes_is_named_ten_and_counted() {
        let skipped: Vec<(NodeId, String)> = (0..10_000)
            .map(|i| {
                (
                    NodeId::new(format!("n{i}")).unwrap(),
                    "not listed yet".into(),
                )
            })
            .collect();
        let resp = with_skipped_names(json_response(StatusCode::OK, String::new()), &skipped);
        let text = resp.headers()[SKIPPED_HEADER].to_str().unwrap();
        assert!(
            text.starts_with("n0 (not listed yet), n1 (not listed yet)"),
            "{text}"
        );
        assert!(
            text.ends_with("and 9990 more (GET /v1/nodes lists every node's state)"),
            "{text}"
        );
        assert!(text.len() < 400, "{text}");
        let few = with_skipped_names(json_response(StatusCode::OK, String::new()), &skipped[..2]);
        assert_eq!(
            few.headers()[SKIPPED_HEADER],
            "n0 (not listed yet), n1 (not listed yet)"
        );
    }
}
