//! The fleet endpoint's HTTP adapter: one Docker host over every node of
//! the caller's tenant (`DOCKER_HOST=tcp://RELAY:7375/fleet`, as Swarm
//! gave one endpoint over many hosts).
//!
//! Reads (`info`, `ps`, `images`) answer from the tenant's cached view
//! ([`crate::fleet::cache`], kept by [`calls`]); `docker run` and
//! `create` are placed by [`crate::fleet::place`] ([`writes`]), and so is
//! `build` ([`images`]); every call
//! about an existing container or exec instance goes to its node, found
//! from the view by `node/name`, bare name, id or id prefix. Containers
//! are listed as `<node-id>/<name>`. A node that is offline is skipped
//! (named in `info`'s warnings and in the `X-Tunnelgate-Skipped` header),
//! never failing the whole call. This module decides nothing about
//! placement and never touches a session or route itself.

mod calls;
mod images;
mod objects;
mod ps_query;
mod shared;
mod writes;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tunnelgate_proto::docker_api::split_version;
use tunnelgate_proto::{NodeId, TenantId};

use super::asks::Caller;
use super::context::{ClientConn, Front};
use super::events;
use crate::error::CallError;
use crate::fleet::view::Health;
use crate::respond::{json as json_response, whole, Body};
use shared::{ask_all, label_node, merged, with_query, with_skipped, with_skipped_names, Ctx};

/// The API version the fleet speaks when no node says its own.
const DEFAULT_API_VERSION: &str = "1.41";

/// Answers a call to `/fleet<rest>`.
pub(super) async fn serve(
    front: &Arc<Front>,
    conn: &ClientConn,
    caller: &Caller,
    rest: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, CallError> {
    let method = req.method().clone();
    let (version, path) = split_version(rest);
    let query = req.uri().query().map(str::to_owned);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = method == Method::GET || method == Method::HEAD;
    if let (true, ["_ping"]) = (read, segments.as_slice()) {
        return Ok(ping(front, caller.tenant()));
    }
    let view = calls::view(front, caller.tenant()).await;
    let cx = Ctx {
        front,
        conn,
        caller,
        view,
        version,
    };
    let is_node = |id: &str| NodeId::new(id).is_ok_and(|id| cx.node(&id).is_some());
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["version"]) => Ok(version_of(front, caller)),
        ("GET", ["info"]) => Ok(info(&cx)),
        ("GET", ["containers", "json"]) => Ok(ps(&cx, query.as_deref()).await),
        ("GET", ["images", "json"]) => Ok(images::list(&cx, query.as_deref()).await),
        ("GET", ["images", "get"]) => images::save(&cx, query.as_deref(), req).await,
        ("POST", ["images", "load"]) => images::load(&cx, query.as_deref(), req).await,
        ("POST", ["build"]) => images::build(&cx, query.as_deref(), req).await,
        ("POST", ["commit"]) => images::commit(&cx, query.as_deref(), req).await,
        ("GET", ["events"]) => Ok(events::fan_in(
            front.clone(),
            caller.clone(),
            query.as_deref(),
        )),
        ("POST", ["containers", "create"]) => writes::create(&cx, query.as_deref(), req).await,
        ("POST", ["images", "create"]) => images::create(&cx, query.as_deref(), req).await,
        // `node/name`, as `ps` lists it: the docker CLI sends the slash.
        (_, ["containers", node, name, tail @ ..])
            if is_node(node) && (!tail.is_empty() || method == Method::DELETE) =>
        {
            writes::container_call(&cx, &format!("{node}/{name}"), tail, req).await
        }
        (_, ["containers", name, tail @ ..]) if !name.is_empty() => {
            writes::container_call(&cx, name, tail, req).await
        }
        ("GET", ["networks"]) => {
            Ok(objects::list(&cx, objects::Kind::Network, query.as_deref()).await)
        }
        ("GET", ["volumes"]) => {
            Ok(objects::list(&cx, objects::Kind::Volume, query.as_deref()).await)
        }
        ("POST", ["networks", "create"]) => objects::create(&cx, objects::Kind::Network, req).await,
        ("POST", ["volumes", "create"]) => objects::create(&cx, objects::Kind::Volume, req).await,
        (_, [kind @ ("networks" | "volumes"), node, name, tail @ ..]) if is_node(node) => {
            let kind = match *kind {
                "networks" => objects::Kind::Network,
                _ => objects::Kind::Volume,
            };
            objects::on_node(&cx, kind, node, name, tail, req).await
        }
        ("POST", ["images", name @ .., "tag"]) if !name.is_empty() => {
            images::everywhere(&cx, &name.join("/"), "/tag", query.as_deref(), req).await
        }
        ("DELETE", ["images", name @ ..]) if !name.is_empty() => {
            images::everywhere(&cx, &name.join("/"), "", query.as_deref(), req).await
        }
        ("GET", ["images", name @ .., last @ ("json" | "history" | "get")]) if !name.is_empty() => {
            images::read(&cx, &name.join("/"), last, req).await
        }
        (_, ["exec", id, tail @ ..]) if !tail.is_empty() => {
            writes::exec_call(&cx, id, tail, req).await
        }
        _ => Err(CallError::FleetUnsupported(format!("{method} {rest}"))),
    }
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

fn version_of(front: &Front, caller: &Caller) -> Response<Body> {
    let tenant = caller.tenant();
    let fleet = front.fleet_of(caller.principal());
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

fn number(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// `docker info` over the fleet, from the view: totals, then as Swarm's
/// did, the strategy, the filters, and per node its status, containers,
/// reserved CPUs and memory of its total, and labels.
fn info(cx: &Ctx<'_>) -> Response<Body> {
    use crate::fleet::filter::resources::{bytes, cpus};
    let nodes = cx.nodes();
    let strategy = cx.front.config.fleet_strategy;
    let filters: Vec<&str> = crate::fleet::filter::all()
        .iter()
        .map(|f| f.name())
        .collect();
    let mut status = vec![
        json!(["Strategy", strategy.to_string()]),
        json!(["Filters", filters.join(", ")]),
        json!(["Nodes", nodes.len().to_string()]),
    ];
    let mut warnings = Vec::new();
    let mut skipped = Vec::new();
    let (mut total, mut running, mut images, mut ncpu, mut mem) = (0, 0, 0, 0, 0);
    for node in &nodes {
        let state = node.health.describe();
        if node.health != Health::Healthy {
            warnings.push(format!(
                "node {} is skipped: {state}; its containers and images are not counted",
                node.id
            ));
            skipped.push((node.id.clone(), state.clone()));
            status.push(json!([format!(" {}", node.id), state]));
            continue;
        }
        let live = node.live().count();
        total += node.containers().len();
        running += live;
        images += node.images.len();
        ncpu += node.facts.ncpu;
        mem += node.facts.mem_total;
        let labels: Vec<String> = node
            .labels
            .iter()
            .chain(node.engine_labels.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        status.push(json!([format!(" {}", node.id), state]));
        let mut line = |key: &str, value: String| status.push(json!([format!("  └ {key}"), value]));
        line("Hostname", node.hostname.clone());
        line(
            "Containers",
            format!("{} ({live} running)", node.containers().len()),
        );
        line(
            "Reserved CPUs",
            format!("{} / {}", cpus(node.reserved_nano_cpus()), node.facts.ncpu),
        );
        line(
            "Reserved Memory",
            format!(
                "{} / {}",
                bytes(node.reserved_memory()),
                bytes(node.facts.mem_total)
            ),
        );
        line("Labels", labels.join(", "));
        line("Route", format!("{} ({})", node.route, node.transport));
        line("ServerVersion", node.facts.server_version.clone());
    }
    let body = json!({
        "ID": "tunnelgate-fleet",
        "Name": "tunnelgate-fleet",
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": total - running,
        "Images": images,
        "NCPU": ncpu,
        "MemTotal": mem,
        "Driver": "tunnelgate-fleet",
        "DriverStatus": status,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "OperatingSystem": format!("tunnelgate fleet of {} nodes", nodes.len()),
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "Swarm": {"LocalNodeState": "inactive"},
        "Warnings": warnings,
    });
    with_skipped_names(json_response(StatusCode::OK, body.to_string()), &skipped)
}

/// `docker ps` over the fleet, from the view: every node's containers
/// (running ones unless `all`), names as `/<node-id>/<name>`, newest
/// first. A filter the view cannot answer sends the call to each node.
async fn ps(cx: &Ctx<'_>, query: Option<&str>) -> Response<Body> {
    let Some(wanted) = ps_query::PsQuery::parse(query) else {
        return ps_asking_every_node(cx.front, cx.caller, query).await;
    };
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    let now = std::time::SystemTime::now();
    for node in cx.nodes() {
        if node.health != Health::Healthy {
            let why = node.health.describe();
            skipped.push((node.id.clone(), why));
            continue;
        }
        if !wanted.may_match(&node) {
            continue;
        }
        for c in node.containers().iter().filter(|c| wanted.matches(c)) {
            let Some(text) = &c.listing else {
                continue;
            };
            let Ok(mut item) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if let Some(Value::Array(names)) = item.get_mut("Names") {
                for name in names.iter_mut() {
                    if let Some(n) = name.as_str() {
                        *name =
                            Value::String(format!("/{}/{}", node.id, n.trim_start_matches('/')));
                    }
                }
            }
            if let (Some(status), Some(obj)) = (c.status_line(now), item.as_object_mut()) {
                obj.insert("Status".into(), Value::String(status));
            }
            label_node(&mut item, &node.id);
            all.push(item);
        }
    }
    all.sort_by_key(|c| std::cmp::Reverse(number(c, "Created")));
    with_skipped_names(
        json_response(StatusCode::OK, Value::Array(all).to_string()),
        &skipped,
    )
}

/// `docker ps` asking each node, for filters the view cannot answer.
async fn ps_asking_every_node(
    front: &Arc<Front>,
    caller: &Caller,
    query: Option<&str>,
) -> Response<Body> {
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
