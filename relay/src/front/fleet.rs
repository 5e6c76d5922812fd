//! The fleet: one read-only Docker endpoint over every node of the
//! caller's tenant (`DOCKER_HOST=tcp://RELAY:7375/fleet`, as Swarm gave
//! one endpoint over many hosts), from calls the relay makes to each node
//! itself ([`super::asks`]).
//!
//! `version`, `info`, `ps`, `images` and `events` answer for the whole
//! fleet: containers are named `<node-id>/<name>`, and reads of one such
//! container (`inspect`, `logs`, `top`, ...) go to its node. A node that
//! is offline or fails is skipped (named in `info`'s warnings and in the
//! `X-Tunnelgate-Skipped` header), never failing the whole call.
//!
//! It never changes a node: anything but a read is refused with an error
//! naming `/nodes/<node-id>`. This module never touches a session or
//! route.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};
use tokio::task::JoinSet;
use tunnelgate_proto::{NodeId, TenantId};

use super::asks::{ask_json, carry, Caller};
use super::{events, ClientConn, Front};
use crate::error::CallError;
use crate::respond::{json as json_response, whole, Body};

/// The API version the fleet speaks when no node says its own.
const DEFAULT_API_VERSION: &str = "1.41";

/// Nodes a fleet view skipped, and why.
pub const SKIPPED_HEADER: &str = "x-tunnelgate-skipped";

/// Splits a leading API version (`/v1.41`) off a Docker path.
fn split_version(path: &str) -> (&str, &str) {
    let Some(after) = path.strip_prefix("/v") else {
        return ("", path);
    };
    let end = after.find('/').unwrap_or(after.len());
    let version = &after[..end];
    let is_version = !version.is_empty()
        && version.contains('.')
        && version.chars().all(|c| c.is_ascii_digit() || c == '.');
    match is_version {
        true => path.split_at(end + 2),
        false => ("", path),
    }
}

/// Answers a call to `/fleet<rest>`.
pub(super) async fn serve(
    front: &Arc<Front>,
    conn: &ClientConn,
    caller: &Caller,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let method = req.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let (version, path) = split_version(rest);
    let query = req.uri().query().map(str::to_owned);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (read, segments.as_slice()) {
        (false, _) => Err(CallError::FleetReadOnly {
            method,
            path: rest.to_owned(),
        }),
        (true, ["_ping"]) => Ok(ping(front, caller.tenant())),
        (true, ["version"]) => Ok(version_of(front, caller.tenant())),
        (true, ["info"]) => Ok(info(front, caller).await),
        (true, ["containers", "json"]) => Ok(ps(front, caller, query.as_deref()).await),
        (true, ["images", "json"]) => Ok(images(front, caller, query.as_deref()).await),
        (true, ["events"]) => Ok(events::fan_in(
            front.clone(),
            caller.clone(),
            query.as_deref(),
        )),
        (true, ["containers", node, name, tail @ ..]) if !tail.is_empty() => {
            let node_id =
                NodeId::new(*node).map_err(|_| CallError::FleetName(format!("{node}/{name}")))?;
            let rest = format!("{version}/containers/{name}/{}", tail.join("/"));
            let req = req.map(Either::Left);
            carry(front, &conn.kept, caller, node_id, &rest, req).await
        }
        // A container by its ID alone (the docker CLI inspects a name, then
        // calls by the ID it got): on whichever node has it.
        (true, ["containers", id, tail @ ..]) if !tail.is_empty() => {
            let node_id = locate(front, caller, id)
                .await
                .ok_or_else(|| CallError::FleetName((*id).to_owned()))?;
            let rest = format!("{version}/containers/{id}/{}", tail.join("/"));
            let req = req.map(Either::Left);
            carry(front, &conn.kept, caller, node_id, &rest, req).await
        }
        (true, _) => Err(CallError::FleetUnsupported(rest.to_owned())),
    }
}

/// The online node that has container `id`, asking them all at once.
async fn locate(front: &Arc<Front>, caller: &Caller, id: &str) -> Option<NodeId> {
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

/// The lowest API version among the tenant's nodes on this relay: every
/// node understands it.
fn api_version(front: &Front, tenant: &TenantId) -> String {
    let parse = |v: &str| -> Option<(u32, u32)> {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    front
        .sessions
        .views(tenant, front.state.relay_id())
        .iter()
        .filter_map(|v| v.docker_api_version.as_deref())
        .filter_map(|v| Some((parse(v)?, v.to_owned())))
        .min()
        .map_or_else(|| DEFAULT_API_VERSION.to_owned(), |(_, v)| v)
}

fn ping(front: &Front, tenant: &TenantId) -> Response<Body> {
    let mut resp = whole(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        Bytes::from("OK"),
    );
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&api_version(front, tenant)) {
        headers.insert("api-version", v);
    }
    headers.insert("ostype", HeaderValue::from_static("linux"));
    headers.insert("docker-experimental", HeaderValue::from_static("false"));
    resp
}

fn version_of(front: &Front, tenant: &TenantId) -> Response<Body> {
    let fleet = front.router.fleet(tenant);
    let online = fleet.iter().filter(|(_, held)| held.is_online()).count();
    let version = env!("CARGO_PKG_VERSION");
    let body = json!({
        "Platform": {"Name": "tunnelgate fleet"},
        "Components": [{
            "Name": "tunnelgate fleet",
            "Version": version,
            "Details": {"Nodes": fleet.len().to_string(), "Online": online.to_string()},
        }],
        "Version": version,
        "ApiVersion": api_version(front, tenant),
        "MinAPIVersion": "1.24",
        "Os": "linux",
        "Arch": go_arch(),
        "KernelVersion": "",
        "GitCommit": "",
        "GoVersion": "",
        "BuildTime": "",
    });
    json_response(StatusCode::OK, body.to_string())
}

/// The architecture as Docker names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// One node's part of a fleet view.
struct Part {
    node: NodeId,
    answer: Result<Value, String>,
}

/// Asks every online node of the caller's tenant for `path` at once; the
/// offline ones answer `Err("offline")` without a call.
async fn ask_all(front: &Arc<Front>, caller: &Caller, path: &str) -> Vec<Part> {
    let mut calls = JoinSet::new();
    let mut parts = Vec::new();
    for (node, held) in front.router.fleet(caller.tenant()) {
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
fn with_skipped(mut resp: Response<Body>, parts: &[Part]) -> Response<Body> {
    let skipped: Vec<String> = parts
        .iter()
        .filter_map(|p| Some(format!("{} ({})", p.node, p.answer.as_ref().err()?)))
        .collect();
    if skipped.is_empty() {
        return resp;
    }
    let text: String = skipped
        .join(", ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&text) {
        resp.headers_mut().insert(SKIPPED_HEADER, v);
    }
    resp
}

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

async fn info(front: &Arc<Front>, caller: &Caller) -> Response<Body> {
    let parts = ask_all(front, caller, "/info").await;
    let sum = |key: &str| -> u64 {
        parts
            .iter()
            .filter_map(|p| p.answer.as_ref().ok())
            .map(|v| number(v, key))
            .sum()
    };
    let mut status = vec![json!(["Nodes", parts.len().to_string()])];
    let mut warnings = Vec::new();
    for part in &parts {
        let line = match &part.answer {
            Ok(v) => format!(
                "online: {} containers ({} running), {} images, Docker {}",
                number(v, "Containers"),
                number(v, "ContainersRunning"),
                number(v, "Images"),
                v.get("ServerVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("?"),
            ),
            Err(why) => {
                warnings.push(format!(
                    "node {} is skipped: {why}; its containers and images are not counted",
                    part.node
                ));
                why.clone()
            }
        };
        status.push(json!([format!(" {}", part.node), line]));
    }
    let body = json!({
        "ID": "tunnelgate-fleet",
        "Name": "tunnelgate-fleet",
        "Containers": sum("Containers"),
        "ContainersRunning": sum("ContainersRunning"),
        "ContainersPaused": sum("ContainersPaused"),
        "ContainersStopped": sum("ContainersStopped"),
        "Images": sum("Images"),
        "NCPU": sum("NCPU"),
        "MemTotal": sum("MemTotal"),
        "Driver": "tunnelgate-fleet",
        "DriverStatus": status,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": format!("tunnelgate fleet of {} nodes", parts.len()),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "Swarm": {"LocalNodeState": "inactive"},
        "Warnings": warnings,
    });
    with_skipped(json_response(StatusCode::OK, body.to_string()), &parts)
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_owned(),
    }
}

/// Every node's list in one, each item labelled with its node and the
/// strings in its array field `field` (names, tags) renamed by `rename`
/// where it gives a new one.
fn merged(
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

/// `docker ps` over the fleet: each node's list (with the caller's `-a`
/// and filters), names as `/<node-id>/<name>`, newest first.
async fn ps(front: &Arc<Front>, caller: &Caller, query: Option<&str>) -> Response<Body> {
    let parts = ask_all(front, caller, &with_query("/containers/json", query)).await;
    let mut all = merged(&parts, "Names", |node, name| {
        Some(format!("/{node}/{}", name.trim_start_matches('/')))
    });
    all.sort_by_key(|c| std::cmp::Reverse(number(c, "Created")));
    with_skipped(
        json_response(StatusCode::OK, Value::Array(all).to_string()),
        &parts,
    )
}

/// `docker images` over the fleet: repository names prefixed with the node.
async fn images(front: &Arc<Front>, caller: &Caller, query: Option<&str>) -> Response<Body> {
    let parts = ask_all(front, caller, &with_query("/images/json", query)).await;
    let all = merged(&parts, "RepoTags", |node, tag| {
        (!tag.starts_with("<none>")).then(|| format!("{node}/{tag}"))
    });
    with_skipped(
        json_response(StatusCode::OK, Value::Array(all).to_string()),
        &parts,
    )
}

/// Puts `tunnelgate.node=<id>` in an object's `Labels`.
fn label_node(object: &mut Value, node: &NodeId) {
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
    use super::*;

    #[test]
    fn a_version_prefix_is_split_off_and_nothing_else() {
        assert_eq!(
            split_version("/v1.41/containers/json"),
            ("/v1.41", "/containers/json")
        );
        assert_eq!(split_version("/_ping"), ("", "/_ping"));
        assert_eq!(split_version("/v1.41"), ("/v1.41", ""));
        assert_eq!(split_version("/volumes"), ("", "/volumes"));
        assert_eq!(split_version("/version"), ("", "/version"));
    }

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
}
