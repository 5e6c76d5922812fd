//! The fleet's container calls: a create placed by the fleet's filters
//! and strategy and tried on its candidates in order, and every call
//! about an existing container or exec instance, carried to the node
//! that has it. After each write it carries, the
//! container is fetched again into the view, so the caller's next read
//! sees it.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tunnelgate_proto::NodeId;

use super::super::asks::{self, carry};
use super::super::routes::query_pairs;
use super::calls::FrontCalls;
use super::shared::{ask_all, locate, Ctx, NODE_HEADER};
use crate::error::CallError;
use crate::fleet::cache::{self, Found};
use crate::fleet::placement::place_indexed;
use crate::fleet::reach::{fetch_created, refresh_container, refresh_images};
use crate::fleet::Ask;
use crate::respond::{json as json_response, Body};

/// The largest create body the fleet reads (Docker's are a few KiB).
const MAX_CREATE_BODY: usize = 4 << 20;
/// How many candidates a create is tried on before its error is final.
const MAX_TRIES: usize = 3;

/// Sends `method path_and_query` with `body` to `node` for the caller.
pub(super) async fn send(
    cx: &Ctx<'_>,
    node: &NodeId,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, CallError> {
    asks::send(
        cx.front,
        cx.caller,
        node,
        method,
        path_and_query,
        headers,
        body,
    )
    .await
}

/// A whole answer's status, headers and body (an answer that breaks off
/// reads as what arrived; the status says what the node meant).
pub(super) async fn whole(resp: Response<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

/// A create request's JSON body, read up to [`MAX_CREATE_BODY`].
pub(super) async fn create_body(body: Incoming) -> Result<Value, CallError> {
    let body = Limited::new(body, MAX_CREATE_BODY)
        .collect()
        .await
        .map_err(|e| {
            CallError::BadQuery(format!("the create request's body could not be read: {e}"))
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| CallError::BadQuery(format!("the create request's body is not JSON: {e}")))
}

/// `docker create` / `run` on the fleet: the name checked across the
/// fleet, the node chosen by filters and strategy, the create tried on
/// the candidates in order. A candidate missing the image pulls it first.
pub(super) async fn create(
    cx: &Ctx<'_>,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let (parts, body) = req.into_parts();
    let mut spec = create_body(body).await?;
    let name = query_pairs(query)
        .find(|(k, _)| *k == "name")
        .map(|(_, v)| v);
    let ask = Ask::from_create(name, &mut spec)?;
    let strategy = cx.front.config.fleet_strategy.strategy();
    let placements = &cx.front.metrics.fleet_placements;
    // The walk for the holder only when the name is somewhere (and
    // before the read lock is taken for the walk: not twice at once).
    let named = name.filter(|n| !n.is_empty() && cx.view.has_name(n));
    let placed = cx.with_nodes(|all, index| {
        if let Some(name) = named {
            let taken = all.iter().filter(|n| cx.sees(n)).find_map(|n| {
                let c = n.containers().iter().find(|c| c.name == name)?;
                Some((n.id.clone(), c.id.clone()))
            });
            if let Some((node, id)) = taken {
                return Err(CallError::FleetNameTaken {
                    name: name.to_owned(),
                    id,
                    node,
                });
            }
        }
        let sees = |n: &crate::fleet::Node| cx.sees(n);
        place_indexed(all, index, sees, &ask, strategy, rand::random()).map_err(|e| {
            placements.with_label_values(&["no_node"]).inc();
            e.into()
        })
    })?;
    let body = Bytes::from(spec.to_string());
    let rest = match query {
        Some(q) => format!("{}/containers/create?{q}", cx.version),
        None => format!("{}/containers/create", cx.version),
    };
    let mut last = None;
    let (mut tries, mut unpullable) = (0, false);
    for node in &placed.ranked {
        // An image that could not be pulled onto one candidate is looked
        // for on the others that already have it.
        let has_image = || cx.node(node).is_some_and(|n| n.has_image(&ask.image));
        if tries == MAX_TRIES || (unpullable && !has_image()) {
            continue;
        }
        tries += 1;
        let tried = create_on(cx, node, &rest, &parts.headers, body.clone(), &ask.image).await?;
        let (status, headers, answer) = tried.answer;
        if tried.pull_failed {
            unpullable = true;
            last.get_or_insert((status, headers, answer, node.clone()));
            continue;
        }
        if status == StatusCode::CREATED {
            placements.with_label_values(&["placed"]).inc();
            let mut answer: Value = serde_json::from_slice(&answer).unwrap_or(json!({}));
            let id = answer["Id"].as_str().unwrap_or_default().to_owned();
            let calls = FrontCalls(cx.front.clone());
            fetch_created(&cx.view, &calls, cx.caller.tenant(), node, &id).await;
            if !placed.notes.is_empty() {
                let warnings = answer
                    .as_object_mut()
                    .map(|o| o.entry("Warnings").or_insert(json!([])));
                if let Some(Value::Array(w)) = warnings {
                    w.extend(placed.notes.iter().map(|n| json!(format!("fleet: {n}"))));
                }
            }
            let mut resp = json_response(status, answer.to_string());
            copy_route(&headers, resp.headers_mut());
            set_node(resp.headers_mut(), node);
            return Ok(resp);
        }
        last = Some((status, headers, answer, node.clone()));
        // A name taken on this node since the view last saw it: the fleet's
        // names are one namespace, so the conflict is the answer; so is
        // any other refusal of the request itself.
        if status.is_client_error() {
            break;
        }
    }
    placements.with_label_values(&["refused"]).inc();
    let (status, headers, answer, node) = last.expect("a placement has a candidate");
    let mut resp = json_response(status, String::from_utf8_lossy(&answer).into_owned());
    copy_route(&headers, resp.headers_mut());
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// One try of a create on `node`.
struct Tried {
    answer: (StatusCode, HeaderMap, Bytes),
    /// The node lacked the image and could not pull it.
    pull_failed: bool,
}

/// One try of a create on `node`: pulls the image there and tries again
/// once if the node does not have it.
async fn create_on(
    cx: &Ctx<'_>,
    node: &NodeId,
    rest: &str,
    headers: &HeaderMap,
    body: Bytes,
    image: &str,
) -> Result<Tried, CallError> {
    let post = |body: Bytes| send(cx, node, Method::POST, rest, headers, body);
    let first = whole(post(body.clone()).await?).await;
    let missing = first.0 == StatusCode::NOT_FOUND
        && asks::docker_message(&first.2).starts_with("No such image");
    if !missing || image.is_empty() {
        return Ok(Tried {
            answer: first,
            pull_failed: false,
        });
    }
    let (from, tag) = split_image(image);
    let pull_path = format!("{}/images/create?fromImage={from}&tag={tag}", cx.version);
    let pulled = pull_one(cx, node, &pull_path, headers).await;
    if pulled.is_err() {
        return Ok(Tried {
            answer: first,
            pull_failed: true,
        });
    }
    Ok(Tried {
        answer: whole(post(body).await?).await,
        pull_failed: false,
    })
}

/// Pulls on one node to the end; `Err` with the node's words if it failed.
async fn pull_one(
    cx: &Ctx<'_>,
    node: &NodeId,
    rest: &str,
    headers: &HeaderMap,
) -> Result<(), String> {
    let resp = send(cx, node, Method::POST, rest, headers, Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let (status, _, body) = whole(resp).await;
    if !status.is_success() {
        return Err(asks::docker_message(&body));
    }
    let error = body
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .find_map(|v| Some(v.get("error")?.as_str()?.to_owned()));
    let calls = FrontCalls(cx.front.clone());
    refresh_images(&cx.view, &calls, cx.caller.tenant(), node).await;
    error.map_or(Ok(()), Err)
}

/// `repo:tag` split as `docker pull` sends it (a registry port is not a tag).
fn split_image(image: &str) -> (String, String) {
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) if !image.contains('@') => {
            let repo = &image[..image.len() - tag.len() - 1];
            (repo.to_owned(), tag.to_owned())
        }
        _ => (image.to_owned(), "latest".to_owned()),
    }
}

pub(super) fn set_node(headers: &mut HeaderMap, node: &NodeId) {
    if let Ok(v) = HeaderValue::from_str(node.as_str()) {
        headers.insert(NODE_HEADER, v);
    }
}

fn copy_route(from: &HeaderMap, to: &mut HeaderMap) {
    if let Some(v) = from.get(super::super::docker::ROUTE_HEADER) {
        to.insert(super::super::docker::ROUTE_HEADER, v.clone());
    }
}

/// Where container `name` is: from the view, else asking every node (a
/// container made on a node directly a moment ago).
pub(super) async fn resolve(cx: &Ctx<'_>, name: &str) -> Result<(NodeId, String), CallError> {
    match cache::find(&cx.nodes(), name) {
        Found::At(node, id) => Ok((node, id)),
        Found::Ambiguous(nodes) => Err(CallError::FleetAmbiguous {
            name: name.to_owned(),
            nodes: nodes
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }),
        Found::Missing => {
            let bare = name.rsplit('/').next().unwrap_or(name);
            let node = locate(cx.front, cx.caller, bare)
                .await
                .ok_or_else(|| CallError::FleetName(name.to_owned()))?;
            Ok((node, bare.to_owned()))
        }
    }
}

/// Whether a call's answer comes at once, so the view can be brought up
/// to date before the caller gets it (not `wait`, `attach`, `logs`, ...).
fn changes_at_once(method: &Method, tail: &[&str]) -> bool {
    match (method.as_str(), tail) {
        ("DELETE", []) => true,
        ("POST", [action]) => matches!(
            *action,
            "start" | "stop" | "restart" | "kill" | "pause" | "unpause" | "rename" | "update"
        ),
        _ => false,
    }
}

/// Any call about an existing container, carried to its node by its id.
pub(super) async fn container_call(
    cx: &Ctx<'_>,
    name: &str,
    tail: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let (node, id) = resolve(cx, name).await?;
    let method = req.method().clone();
    let rest = match tail {
        [] => format!("{}/containers/{id}", cx.version),
        tail => format!("{}/containers/{id}/{}", cx.version, tail.join("/")),
    };
    let req = req.map(Either::Left);
    let resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    let calls = FrontCalls(cx.front.clone());
    let tenant = cx.caller.tenant();
    let mut resp =
        if method == Method::POST && tail == ["exec"] && resp.status() == StatusCode::CREATED {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if let Some(exec) = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| Some(v.get("Id")?.as_str()?.to_owned()))
            {
                cx.view.put_exec(exec, node.clone());
            }
            Response::from_parts(
                parts,
                Full::new(body).map_err(|never| match never {}).boxed(),
            )
        } else if resp.status().is_success() && changes_at_once(&method, tail) {
            let full = cx
                .node(&node)
                .and_then(|n| Some(n.container(&id)?.id.clone()));
            if let Some(full) = full {
                match method == Method::DELETE {
                    true => cx.view.remove_container(&node, &full),
                    false => refresh_container(&cx.view, &calls, tenant, &node, &full).await,
                }
            }
            resp
        } else if method == Method::GET && tail == ["json"] && resp.status() == StatusCode::OK {
            with_node_in_inspect(resp, cx.node(&node).as_deref()).await
        } else {
            resp
        };
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// A container's inspect with its node in `Node`, as Swarm gave it.
async fn with_node_in_inspect(
    resp: Response<Body>,
    node: Option<&crate::fleet::Node>,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = match (serde_json::from_slice::<Value>(&body), node) {
        (Ok(Value::Object(mut obj)), Some(n)) => {
            let labels: serde_json::Map<String, Value> = n
                .labels
                .iter()
                .chain(n.engine_labels.iter())
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            obj.insert(
                "Node".into(),
                json!({"ID": n.id.as_str(), "Name": n.id.as_str(), "Hostname": n.hostname,
                       "Addr": n.relay, "Labels": labels}),
            );
            Bytes::from(Value::Object(obj).to_string())
        }
        _ => body,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Full::new(body).map_err(|never| match never {}).boxed(),
    )
}

/// A call about an exec instance, carried to the node that made it.
pub(super) async fn exec_call(
    cx: &Ctx<'_>,
    id: &str,
    tail: &[&str],
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let node = match cx.view.exec_node(id).filter(|n| cx.node(n).is_some()) {
        Some(node) => node,
        None => ask_all(cx.front, cx.caller, &format!("/exec/{id}/json"))
            .await
            .into_iter()
            .find(|p| p.answer.is_ok())
            .map(|p| p.node)
            .ok_or_else(|| CallError::FleetNoExec(id.to_owned()))?,
    };
    let rest = format!("{}/exec/{id}/{}", cx.version, tail.join("/"));
    let req = req.map(Either::Left);
    let mut resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_splits_into_repo_and_tag_as_docker_pull_sends_it() {
        let split = |i: &str| split_image(i);
        assert_eq!(split("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(split("busybox:1.36"), ("busybox".into(), "1.36".into()));
        assert_eq!(
            split("127.0.0.1:5000/tools/sh"),
            ("127.0.0.1:5000/tools/sh".into(), "latest".into())
        );
        assert_eq!(
            split("127.0.0.1:5000/sh:2"),
            ("127.0.0.1:5000/sh".into(), "2".into())
        );
    }

    #[test]
    fn only_calls_answered_at_once_refresh_the_view_first() {
        assert!(changes_at_once(&Method::POST, &["start"]));
        assert!(changes_at_once(&Method::DELETE, &[]));
        assert!(!changes_at_once(&Method::POST, &["wait"]));
        assert!(!changes_at_once(&Method::POST, &["attach"]));
        assert!(!changes_at_once(&Method::GET, &["json"]));
    }
}
