//! The fleet's image calls, as Swarm handled them: `docker images` from
//! the view; `pull`, `load` and `import` on every node that can take
//! containers, each node's progress lines tagged with it; `build` placed
//! by the same filters as a create (given as build args); `commit` on
//! the container's node; `save`, `inspect` and `history` from a node
//! that has the image; `tag` and `rmi` on every node that has it.
//! Nothing here chooses a node other than through [`crate::fleet::place`]
//! and the view.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tunnelgate_proto::NodeId;

use super::super::asks::Caller;
use super::super::asks::{self, carry};
use super::super::context::Front;
use super::calls::FrontCalls;
use super::shared::{
    ask_all, label_node, merged, with_query, with_skipped, with_skipped_names, Ctx, NODE_HEADER,
};
use super::writes::{resolve, send, set_node, whole};
use crate::error::CallError;
use crate::fleet::reach::refresh_images;
use crate::fleet::view::Health;
use crate::fleet::{place, Ask};
use crate::respond::{json as json_response, Body, ChannelBody, LastWord};

/// The largest image archive `load` or `import` holds in memory to send
/// to every node.
const MAX_ARCHIVE: usize = 1 << 30;

/// A query string's pairs, decoded.
fn decoded(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn encoded(pairs: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Whether the view's listing answers `docker images` with this query:
/// it holds each node's top-level images, unfiltered.
fn view_answers(pairs: &[(String, String)]) -> bool {
    pairs.iter().all(|(k, v)| match k.as_str() {
        "all" => v == "0" || v == "false",
        "filters" => v.is_empty() || v == "{}",
        _ => true,
    })
}

/// `docker images` over the fleet: repository names prefixed with the
/// node, from the view; a filter it cannot answer asks every node.
pub(super) async fn list(cx: &Ctx<'_>, query: Option<&str>) -> Response<Body> {
    if !view_answers(&decoded(query)) {
        return images_asking_every_node(cx.front, cx.caller, query).await;
    }
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for node in cx.nodes() {
        if node.health != Health::Healthy {
            skipped.push((node.id.clone(), node.health.describe()));
            continue;
        }
        for image in &node.images {
            let Some(mut item) = image
                .listing
                .as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
            else {
                continue;
            };
            if let Some(Value::Array(tags)) = item.get_mut("RepoTags") {
                for tag in tags.iter_mut() {
                    if let Some(t) = tag.as_str().filter(|t| !t.starts_with("<none>")) {
                        *tag = Value::String(format!("{}/{t}", node.id));
                    }
                }
            }
            label_node(&mut item, &node.id);
            all.push(item);
        }
    }
    all.sort_by_key(|i| std::cmp::Reverse(i["Created"].as_i64().unwrap_or(0)));
    with_skipped_names(
        json_response(StatusCode::OK, Value::Array(all).to_string()),
        &skipped,
    )
}

/// `docker images` asking each node, for filters the view cannot answer.
async fn images_asking_every_node(
    front: &Arc<Front>,
    caller: &Caller,
    query: Option<&str>,
) -> Response<Body> {
    let parts = ask_all(front, caller, &with_query("/images/json", query)).await;
    let all = merged(&parts, "RepoTags", |node, tag| {
        (!tag.starts_with("<none>")).then(|| format!("{node}/{tag}"))
    });
    with_skipped(
        json_response(StatusCode::OK, Value::Array(all).to_string()),
        &parts,
    )
}

/// The nodes that can take containers now.
fn takers(cx: &Ctx<'_>) -> Vec<NodeId> {
    cx.nodes()
        .iter()
        .filter(|n| n.health == Health::Healthy && n.writable)
        .map(|n| n.id.clone())
        .collect()
}

/// `docker pull` (`fromImage`) and `docker import` (`fromSrc`) on the
/// fleet: on every node that can take containers at once. An archive
/// given in the body is read once and sent to each.
pub(super) async fn create(
    cx: &Ctx<'_>,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let rest = with_query(&format!("{}/images/create", cx.version), query);
    let headers = req.headers().clone();
    let from_body = decoded(query)
        .iter()
        .any(|(k, v)| k == "fromSrc" && v == "-");
    let (verb, body) = match from_body {
        true => ("imported", archive(req.into_body(), "import").await?),
        false => ("pulled", Bytes::new()),
    };
    Ok(fan_out(cx, &rest, &headers, body, verb))
}

/// `docker load` on the fleet: the archive read once and loaded on every
/// node that can take containers.
pub(super) async fn load(
    cx: &Ctx<'_>,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let rest = with_query(&format!("{}/images/load", cx.version), query);
    let mut headers = HeaderMap::new();
    if let Some(v) = req.headers().get(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, v.clone());
    }
    let body = archive(req.into_body(), "load").await?;
    Ok(fan_out(cx, &rest, &headers, body, "loaded"))
}

/// An image archive, held whole to send to every node.
async fn archive(body: Incoming, what: &str) -> Result<Bytes, CallError> {
    let read = Limited::new(body, MAX_ARCHIVE).collect().await;
    read.map(|b| b.to_bytes()).map_err(|e| {
        CallError::BadQuery(format!(
            "the {what} archive could not be read ({e}); the fleet holds up to {} MiB to send to \
             every node: {what} a larger one on each node through /nodes/<node-id>",
            MAX_ARCHIVE >> 20
        ))
    })
}

/// Sends one call to every node that can take containers, at once, and
/// streams their progress lines, each tagged with its node, then one line
/// per node saying how it ended. An error line only if every node failed.
fn fan_out(
    cx: &Ctx<'_>,
    rest: &str,
    headers: &HeaderMap,
    body: Bytes,
    verb: &'static str,
) -> Response<Body> {
    let targets = takers(cx);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let last = Arc::new(LastWord::default());
    let (front, caller, view) = (cx.front.clone(), cx.caller.clone(), cx.view.clone());
    let (rest, headers) = (rest.to_owned(), headers.clone());
    let tasks = front.tasks.clone();
    tasks.spawn(async move {
        let mut calls = tokio::task::JoinSet::new();
        for node in targets.clone() {
            let (front, caller, view, tx) =
                (front.clone(), caller.clone(), view.clone(), tx.clone());
            let (rest, headers, body) = (rest.clone(), headers.clone(), body.clone());
            calls.spawn(async move {
                let resp =
                    asks::send(&front, &caller, &node, Method::POST, &rest, &headers, body).await;
                let outcome = match resp {
                    Err(e) => Err(e.to_string()),
                    Ok(resp) if !resp.status().is_success() => {
                        Err(asks::docker_message(&whole(resp).await.2))
                    }
                    Ok(resp) => tagged_progress(&node, resp.into_body(), &tx).await,
                };
                refresh_images(&view, &FrontCalls(front.clone()), caller.tenant(), &node).await;
                (node, outcome)
            });
        }
        let mut failed = Vec::new();
        let mut done = 0;
        while let Some(Ok((node, outcome))) = calls.join_next().await {
            let line = match &outcome {
                Ok(()) => {
                    done += 1;
                    json!({"status": format!("{node}: {verb}")})
                }
                Err(why) => {
                    failed.push(format!("{node}: {why}"));
                    json!({"status": format!("{node}: failed: {why}")})
                }
            };
            let _ = tx.send(Bytes::from(format!("{line}\n"))).await;
        }
        let end = match (done, targets.len()) {
            (_, 0) => {
                let why = "no node of the fleet can take an image now: none is online with its \
                           daemon up and writes allowed";
                json!({"error": why, "errorDetail": {"message": why}})
            }
            (0, _) => {
                let why = format!("it failed on every node: {}", failed.join("; "));
                json!({"error": why, "errorDetail": {"message": why}})
            }
            (n, all) => json!({"status": format!("{verb} on {n} of {all} nodes")}),
        };
        let _ = tx.send(Bytes::from(format!("{end}\n"))).await;
    });
    let mut resp = Response::new(ChannelBody::boxed_body(rx, last));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Passes one node's progress lines on, each tagged with the node; `Err`
/// with the node's words if it reported an error.
async fn tagged_progress(
    node: &NodeId,
    mut body: Body,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), String> {
    let mut buf = BytesMut::new();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the answer broke off: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            let Ok(mut v) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                error = Some(e.to_owned());
                continue;
            }
            tag(&mut v, node);
            if tx.send(Bytes::from(format!("{v}\n"))).await.is_err() {
                return Err("the client left".into());
            }
        }
    }
    error.map_or(Ok(()), Err)
}

/// Tags a progress line with its node: the layer id when it has one,
/// else its status or its text.
fn tag(line: &mut Value, node: &NodeId) {
    for key in ["id", "status", "stream"] {
        if let Some(text) = line.get(key).and_then(Value::as_str) {
            line[key] = json!(format!("{node}: {text}"));
            return;
        }
    }
}

/// A node that can take calls and has every one of `names`, or Docker's
/// own "No such image" for the first that no such node has.
fn holder(cx: &Ctx<'_>, names: &[&str]) -> Result<NodeId, CallError> {
    let nodes = cx.nodes();
    let healthy = || nodes.iter().filter(|n| n.health == Health::Healthy);
    healthy()
        .find(|n| names.iter().all(|name| n.has_image(name)))
        .map(|n| n.id.clone())
        .ok_or_else(|| {
            let missing = names
                .iter()
                .find(|name| !healthy().any(|n| n.has_image(name)))
                .unwrap_or(&names[0]);
            CallError::FleetNoImage((*missing).to_owned())
        })
}

/// `docker image inspect`, `history` or `save` of one image on the
/// fleet: from a node that can take calls and has it, or Docker's own
/// "No such image" so the client pulls it.
pub(super) async fn read(
    cx: &Ctx<'_>,
    name: &str,
    what: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let node = holder(cx, &[name])?;
    let rest = format!("{}/images/{name}/{what}", cx.version);
    let req = req.map(Either::Left);
    let mut resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// `docker save` of several images: from a node that has them all.
pub(super) async fn save(
    cx: &Ctx<'_>,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let pairs = decoded(query);
    let names: Vec<&str> = pairs
        .iter()
        .filter(|(k, _)| k == "names")
        .map(|(_, v)| v.as_str())
        .collect();
    if names.is_empty() {
        return Err(CallError::BadQuery(
            "docker save needs at least one image: give it as ?names=IMAGE".into(),
        ));
    }
    let node = holder(cx, &names)?;
    let rest = format!("{}/images/get", cx.version);
    let req = req.map(Either::Left);
    let mut resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// `docker tag` and `docker rmi` on the fleet: on every live node that
/// has the image, at once. The answer is each node's, merged (`rmi`'s
/// lists of what went), with the nodes in `X-Tunnelgate-Node`; an error
/// only when every node refused, with the first node's words.
pub(super) async fn everywhere(
    cx: &Ctx<'_>,
    name: &str,
    suffix: &str,
    query: Option<&str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let method = req.method().clone();
    let headers = req.headers().clone();
    let nodes: Vec<NodeId> = cx
        .nodes()
        .iter()
        .filter(|n| n.health == Health::Healthy && n.has_image(name))
        .map(|n| n.id.clone())
        .collect();
    if nodes.is_empty() {
        return Err(CallError::FleetNoImage(name.to_owned()));
    }
    let path = with_query(&format!("{}/images/{name}{suffix}", cx.version), query);
    let calls = nodes.iter().map(|node| {
        let (method, path, headers) = (method.clone(), path.clone(), headers.clone());
        async move {
            let answer = send(cx, node, method, &path, &headers, Bytes::new()).await;
            let answer = match answer {
                Ok(resp) => whole(resp).await,
                Err(e) => (e.status(), HeaderMap::new(), Bytes::from(e.to_string())),
            };
            let calls = FrontCalls(cx.front.clone());
            refresh_images(&cx.view, &calls, cx.caller.tenant(), node).await;
            (node.clone(), answer)
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let done: Vec<&(NodeId, (StatusCode, HeaderMap, Bytes))> = answers
        .iter()
        .filter(|(_, (status, _, _))| status.is_success())
        .collect();
    let Some((_, (status, _, _))) = done.first() else {
        let (node, (status, _, body)) = &answers[0];
        let message = format!("node {node}: {}", asks::docker_message(body));
        return Ok(crate::respond::docker_error(*status, &message));
    };
    let merged: Vec<Value> = done
        .iter()
        .filter_map(|(_, (_, _, body))| serde_json::from_slice::<Vec<Value>>(body).ok())
        .flatten()
        .collect();
    let body = match method == Method::DELETE {
        true => Value::Array(merged).to_string(),
        false => String::new(),
    };
    let mut resp = json_response(*status, body);
    let names: Vec<&str> = done.iter().map(|(n, _)| n.as_str()).collect();
    if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
        resp.headers_mut().insert(NODE_HEADER, v);
    }
    Ok(resp)
}

/// `docker commit` on the fleet: on the container's node, found as any
/// container call finds it.
pub(super) async fn commit(
    cx: &Ctx<'_>,
    query: Option<&str>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let mut pairs = decoded(query);
    let Some((_, container)) = pairs.iter_mut().find(|(k, _)| k == "container") else {
        return Err(CallError::BadQuery(
            "docker commit needs the container: give it as ?container=NAME".into(),
        ));
    };
    let (node, id) = resolve(cx, container).await?;
    *container = id;
    let rest = format!("{}/commit", cx.version);
    set_uri(&mut req, &rest, &pairs)?;
    let req = req.map(Either::Left);
    let mut resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    if resp.status().is_success() {
        let calls = FrontCalls(cx.front.clone());
        refresh_images(&cx.view, &calls, cx.caller.tenant(), &node).await;
    }
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// `docker build` on the fleet: placed as a create is, by the filters
/// given as build args (`--build-arg constraint:node==web-1`, as Swarm
/// read them) and the `-m` asked; the context streamed to that node. The
/// filters are taken out of the build args the node sees.
pub(super) async fn build(
    cx: &Ctx<'_>,
    query: Option<&str>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let mut pairs = decoded(query);
    let mut env = Vec::new();
    if let Some((_, args)) = pairs.iter_mut().find(|(k, _)| k == "buildargs") {
        let mut map: serde_json::Map<String, Value> = serde_json::from_str(args)
            .map_err(|e| CallError::BadQuery(format!("the build args are not a JSON map: {e}")))?;
        map.retain(|k, v| {
            let filter = k.starts_with("constraint:") || k.starts_with("affinity:");
            if filter {
                env.push(json!(format!("{k}={}", v.as_str().unwrap_or(""))));
            }
            !filter
        });
        *args = Value::Object(map).to_string();
    }
    let memory: u64 = pairs
        .iter()
        .find(|(k, _)| k == "memory")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut spec = json!({"Env": env, "HostConfig": {"Memory": memory}});
    let ask = Ask::from_create(None, &mut spec)?;
    let nodes = cx.nodes();
    let fleet: Vec<&crate::fleet::Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let strategy = cx.front.config.fleet_strategy.strategy();
    let placed = place(&fleet, &ask, strategy, rand::random())?;
    let node = placed.ranked[0].clone();
    let rest = format!("{}/build", cx.version);
    set_uri(&mut req, &rest, &pairs)?;
    let req = req.map(Either::Left);
    let resp = carry(cx.front, &cx.conn.kept, cx.caller, node.clone(), &rest, req).await?;
    let mut resp = images_read_at_end(cx, &node, resp);
    set_node(resp.headers_mut(), &node);
    Ok(resp)
}

/// `resp` passed on as it comes; when it ends, `node`'s images are read
/// into the view before the caller sees the end, so the caller's next
/// read has what the call made. An answer that breaks off ends with an
/// error line saying so.
fn images_read_at_end(cx: &Ctx<'_>, node: &NodeId, resp: Response<Body>) -> Response<Body> {
    let (mut parts, mut body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (front, caller, view) = (cx.front.clone(), cx.caller.clone(), cx.view.clone());
    let node = node.clone();
    let tasks = front.tasks.clone();
    tasks.spawn(async move {
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => frame.into_data().unwrap_or_default(),
                Err(e) => {
                    let why = format!("node {node}'s answer broke off: {e}");
                    let line = json!({"error": why, "errorDetail": {"message": why}});
                    let _ = tx.send(Bytes::from(format!("{line}\n"))).await;
                    break;
                }
            };
            if tx.send(data).await.is_err() {
                break;
            }
        }
        refresh_images(&view, &FrontCalls(front.clone()), caller.tenant(), &node).await;
    });
    Response::from_parts(parts, ChannelBody::boxed_body(rx, Arc::default()))
}

/// Points a request at `path` with the query `pairs`.
fn set_uri<B>(
    req: &mut Request<B>,
    path: &str,
    pairs: &[(String, String)],
) -> Result<(), CallError> {
    let uri = with_query(path, Some(&encoded(pairs)));
    *req.uri_mut() = Uri::try_from(uri).map_err(CallError::InvalidPath)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_answers_images_unless_asked_for_all_or_a_filter() {
        let q = |s: &str| decoded(Some(s));
        assert!(view_answers(&q("")));
        assert!(view_answers(&q("filters=%7B%7D")));
        assert!(view_answers(&q("all=0&digests=1")));
        assert!(!view_answers(&q("all=1")));
        assert!(!view_answers(&q(
            "filters=%7B%22dangling%22%3A%7B%22true%22%3Atrue%7D%7D"
        )));
    }

    #[test]
    fn a_progress_line_is_tagged_where_the_cli_shows_it() {
        let node = NodeId::new("n1").unwrap();
        let mut layer = json!({"id": "abc", "status": "Downloading"});
        tag(&mut layer, &node);
        assert_eq!(layer["id"], "n1: abc");
        assert_eq!(layer["status"], "Downloading");
        let mut loaded = json!({"stream": "Loaded image: busybox:latest\n"});
        tag(&mut loaded, &node);
        assert_eq!(loaded["stream"], "n1: Loaded image: busybox:latest\n");
    }
}
