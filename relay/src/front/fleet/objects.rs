//! Networks and volumes on the fleet, as Swarm had them: listed from
//! every node as `<node-id>/<name>`, reached by that name on their node,
//! and created on a node the create's constraints pick (the label
//! `com.docker.swarm.constraints`, or `constraint:node==…` among a
//! network's options), by the same placement as containers.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tunnelgate_proto::NodeId;

use super::super::asks::carry;
use super::shared::{ask_all, label_node, with_query, with_skipped, Ctx, Part};
use crate::error::CallError;
use crate::fleet::expr::Expr;
use crate::fleet::{place, Ask};
use crate::respond::{json as json_response, Body};

/// Which kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `/networks`.
    Network,
    /// `/volumes`.
    Volume,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Self::Network => "networks",
            Self::Volume => "volumes",
        }
    }
}

/// Each node's objects, names as `<node-id>/<name>`.
pub(super) async fn list(cx: &Ctx<'_>, kind: Kind, query: Option<&str>) -> Response<Body> {
    let path = with_query(&format!("/{}", kind.path()), query);
    let mut parts: Vec<Part> = ask_all(cx.front, cx.caller, &path).await;
    // A volume list is {"Volumes": [...]}: the same shape as a network's.
    for part in &mut parts {
        if let Ok(v) = &mut part.answer {
            if kind == Kind::Volume {
                *v = v
                    .get("Volumes")
                    .cloned()
                    .unwrap_or(Value::Array(Vec::new()));
            }
        }
    }
    let mut all = Vec::new();
    for part in &parts {
        let Ok(Value::Array(items)) = &part.answer else {
            continue;
        };
        for item in items {
            let mut item = item.clone();
            if let Some(name) = item.get("Name").and_then(Value::as_str) {
                item["Name"] = json!(format!("{}/{name}", part.node));
            }
            label_node(&mut item, &part.node);
            all.push(item);
        }
    }
    let body = match kind {
        Kind::Network => Value::Array(all),
        Kind::Volume => json!({"Volumes": all, "Warnings": []}),
    };
    with_skipped(json_response(StatusCode::OK, body.to_string()), &parts)
}

/// A call about `<node-id>/<name>`, on its node.
pub(super) async fn on_node(
    cx: &Ctx<'_>,
    kind: Kind,
    node: &str,
    name: &str,
    tail: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let node =
        NodeId::new(node).map_err(|_| CallError::FleetUnsupported(format!("{node}/{name}")))?;
    let rest = match tail {
        [] => format!("{}/{}/{name}", cx.version, kind.path()),
        tail => format!("{}/{}/{name}/{}", cx.version, kind.path(), tail.join("/")),
    };
    carry(
        cx.front,
        &cx.conn.kept,
        cx.caller,
        node,
        &rest,
        req.map(Either::Left),
    )
    .await
}

/// A create, on the node its constraints pick.
pub(super) async fn create(
    cx: &Ctx<'_>,
    kind: Kind,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let (parts, body) = req.into_parts();
    let mut spec = super::writes::create_body(body).await?;
    let mut ask = Ask::from_create(None, &mut spec)?;
    // `docker network create -o constraint:node==n1`, as a Swarm option.
    if let Some(Value::Object(options)) = spec.get_mut("Options") {
        let keys: Vec<String> = options
            .keys()
            .filter(|k| k.starts_with("constraint:"))
            .cloned()
            .collect();
        for key in keys {
            let value = options
                .remove(&key)
                .and_then(|v| v.as_str().map(str::to_owned));
            let text = format!(
                "{}{}",
                &key["constraint:".len()..],
                value.map(|v| format!("=={v}")).unwrap_or_default()
            );
            ask.constraints
                .push(Expr::parse(&text).map_err(crate::fleet::ask::AskError::from)?);
        }
    }
    let nodes = cx.nodes();
    let fleet: Vec<&crate::fleet::Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed = place(
        &fleet,
        &ask,
        cx.front.config.fleet_strategy.strategy(),
        rand::random(),
    )?;
    let node = placed.ranked[0].clone();
    let rest = format!("{}/{}/create", cx.version, kind.path());
    let body = Bytes::from(spec.to_string());
    let mut resp =
        super::writes::send(cx, &node, Method::POST, &rest, &parts.headers, body).await?;
    super::writes::set_node(resp.headers_mut(), &node);
    Ok(resp)
}
