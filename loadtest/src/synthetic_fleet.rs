//! A synthetic Docker responder for a whole fleet: NOT dockerd. One
//! process answers for every simulated node, telling them apart by the
//! loopback address an agent dialed (agent `i` dials [`node_addr`]`(i)`),
//! so 10,000 nodes cost one listening socket. Each node has a fixed set
//! of made-up containers and one image, answers the calls the relay's
//! fleet view and placement make (`/info`, container listings and
//! inspects, `/images/json`, create, start, remove, and an `/events`
//! stream that stays open and tells of what those three did), and nothing
//! else.
//!
//! It runs in a process of its own because every node holds an event
//! stream open: 10,000 of them are 10,000 descriptors on each side, and
//! both sides in one process would pass the machine's limit of 20,000.
//! `GET /_calls` (on any address) says how many calls it has answered,
//! so a scenario can show that a read was answered without asking nodes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::helper_proc::HelperProc;

/// The shards nodes are spread over by their `shard` container label:
/// node `i` is in shard `i % SHARDS`.
pub const SHARDS: usize = 1000;

/// The daemon label zones nodes are spread over: node `i` has
/// `zone=z{i % ZONES}`.
pub const ZONES: usize = 10;

/// The loopback address agent `i` dials for its node's daemon.
pub fn node_addr(i: usize, port: u16) -> SocketAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    let octets = [127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port)
}

/// The node a connection to `local` (the address dialed) is for.
fn node_of(local: SocketAddr) -> Option<usize> {
    let IpAddr::V4(ip) = local.ip() else {
        return None;
    };
    let [a, b, c, d] = ip.octets();
    (a == 127 && b >= 1)
        .then(|| (usize::from(b - 1) << 16) | (usize::from(c) << 8) | usize::from(d))
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

/// A container made through the responder (`POST /containers/create`).
struct Made {
    node: usize,
    name: String,
    body: Value,
}

struct Fleet {
    containers: usize,
    calls: AtomicU64,
    made: Mutex<HashMap<String, Made>>,
    next: AtomicU64,
    /// Each node's open event streams.
    watchers: Mutex<HashMap<usize, Vec<mpsc::UnboundedSender<Bytes>>>>,
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn ok_json(v: &Value) -> Reply {
    reply(StatusCode::OK, v.to_string())
}

fn not_found(what: &str) -> Reply {
    let msg = json!({ "message": format!("synthetic fleet responder: {what}") });
    reply(StatusCode::NOT_FOUND, msg.to_string())
}

/// Container `k` of node `i`'s id: the node and the number in hex.
fn made_up_id(i: usize, k: usize) -> String {
    format!("{i:08x}{k:056x}")
}

const IMAGE_ID: &str = "sha256:5157000000000000000000000000000000000000000000000000000000000000";

impl Fleet {
    fn info(i: usize, containers: usize) -> Value {
        json!({
            "ID": format!("sim-{i}"), "Name": format!("sim-{i}"),
            "NCPU": 4, "MemTotal": 8u64 << 30, "Driver": "overlay2",
            "KernelVersion": "6.1.0-synthetic", "OperatingSystem": "synthetic",
            "Architecture": "x86_64", "ServerVersion": "synthetic",
            "Labels": [format!("zone=z{}", i % ZONES)],
            "Containers": containers, "Images": 1,
        })
    }

    /// Node `i`'s container `k`: its ps entry and its inspect.
    fn made_up(i: usize, k: usize) -> (Value, Value) {
        let id = made_up_id(i, k);
        let name = format!("n{i}-c{k}");
        let labels = json!({"app": format!("svc{k}"), "shard": format!("s{}", i % SHARDS)});
        let ports = if k == 0 {
            json!([{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"}])
        } else {
            json!([])
        };
        let bindings = if k == 0 {
            json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]})
        } else {
            json!({})
        };
        let entry = json!({
            "Id": id, "Names": [format!("/{name}")], "Image": "sim", "ImageID": IMAGE_ID,
            "Command": "/bin/sim", "Created": 1_700_000_000, "Ports": ports,
            "Labels": labels, "State": "running", "Status": "Up 2 hours",
            "HostConfig": {"NetworkMode": "none"},
            "NetworkSettings": {"Networks": {}}, "Mounts": [],
        });
        let inspect = json!({
            "Id": id, "Name": format!("/{name}"), "Image": IMAGE_ID,
            "Created": "2023-11-14T22:13:20Z",
            "Config": {"Image": "sim", "Labels": labels, "ExposedPorts": {"80/tcp": {}}},
            "HostConfig": {"Memory": 64u64 << 20, "NanoCpus": 100_000_000,
                           "NetworkMode": "none", "PortBindings": bindings},
            "State": {"Status": "running", "Running": true,
                      "StartedAt": "2023-11-14T22:13:21Z", "FinishedAt": "0001-01-01T00:00:00Z",
                      "ExitCode": 0},
        });
        (entry, inspect)
    }

    /// A container made here: its ps entry and inspect.
    fn of_made(id: &str, m: &Made) -> (Value, Value) {
        let labels = m.body.get("Labels").cloned().unwrap_or(json!({}));
        let host = m.body.get("HostConfig").cloned().unwrap_or(json!({}));
        let entry = json!({
            "Id": id, "Names": [format!("/{}", m.name)], "Image": m.body["Image"],
            "ImageID": IMAGE_ID, "Command": "/bin/sim", "Created": 1_700_000_000,
            "Ports": [], "Labels": labels, "State": "created", "Status": "Created",
            "HostConfig": {"NetworkMode": "none"}, "NetworkSettings": {"Networks": {}},
            "Mounts": [],
        });
        let inspect = json!({
            "Id": id, "Name": format!("/{}", m.name), "Image": IMAGE_ID,
            "Created": "2023-11-14T22:13:20Z",
            "Config": {"Image": m.body["Image"], "Labels": labels},
            "HostConfig": host,
            "State": {"Status": "created", "Running": false,
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z",
                      "ExitCode": 0},
        });
        (entry, inspect)
    }

    /// Node `i`'s container `id` (made up or made here).
    fn container(&self, i: usize, id: &str) -> Option<(Value, Value)> {
        if let Some(m) = self.made().get(id) {
            return (m.node == i).then(|| Self::of_made(id, m));
        }
        let node = usize::from_str_radix(id.get(..8)?, 16).ok()?;
        let k = usize::from_str_radix(id.get(8..)?, 16).ok()?;
        (node == i && k < self.containers && id.len() == 64).then(|| Self::made_up(i, k))
    }

    /// Tells node `i`'s event streams that container `id` saw `action`,
    /// as dockerd does; streams whose reader left are dropped.
    fn event(&self, i: usize, id: &str, name: &str, action: &str) {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let line = json!({
            "Type": "container", "Action": action, "status": action, "id": id,
            "Actor": {"ID": id, "Attributes": {"name": name, "image": "sim"}},
            "scope": "local", "time": nanos / 1_000_000_000, "timeNano": nanos,
        });
        let line = Bytes::from(format!("{line}\n"));
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(streams) = watchers.get_mut(&i) {
            streams.retain(|s| s.send(line.clone()).is_ok());
        }
    }

    fn made(&self) -> std::sync::MutexGuard<'_, HashMap<String, Made>> {
        self.made.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /containers/json`: all of node `i`'s, or those an `id` filter names.
    fn listing(&self, i: usize, query: &str) -> Value {
        let ids: Option<Vec<String>> = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "filters")
            .and_then(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .and_then(|f| {
                let ids = f.get("id")?.as_array()?;
                Some(
                    ids.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect(),
                )
            });
        let entries: Vec<Value> = match ids {
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.container(i, id))
                .map(|(entry, _)| entry)
                .collect(),
            None => {
                let made = self.made();
                (0..self.containers)
                    .map(|k| Self::made_up(i, k).0)
                    .chain(
                        made.iter()
                            .filter(|(_, m)| m.node == i)
                            .map(|(id, m)| Self::of_made(id, m).0),
                    )
                    .collect()
            }
        };
        Value::Array(entries)
    }

    fn create(&self, i: usize, query: &str, body: &[u8]) -> Reply {
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return reply(StatusCode::BAD_REQUEST, r#"{"message":"unreadable body"}"#);
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let name = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "name")
            .map_or_else(|| format!("made-{i}-{n}"), |(_, v)| v.into_owned());
        let mut made = self.made();
        if made.values().any(|m| m.node == i && m.name == name) {
            let msg = json!({"message": format!("Conflict. The container name \"/{name}\" is already in use")});
            return reply(StatusCode::CONFLICT, msg.to_string());
        }
        let id = format!("{i:08x}ff{n:054x}");
        made.insert(
            id.clone(),
            Made {
                node: i,
                name: name.clone(),
                body,
            },
        );
        drop(made);
        self.event(i, &id, &name, "create");
        reply(
            StatusCode::CREATED,
            json!({"Id": id, "Warnings": []}).to_string(),
        )
    }

    async fn answer(
        self: Arc<Self>,
        node: Option<usize>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<Reply, Infallible> {
        let path = req.uri().path().to_owned();
        // The API version prefix (`/v1.41/...`) is optional, as for dockerd.
        let path = match path.strip_prefix("/v1.") {
            Some(rest) => rest.find('/').map_or("/", |at| &rest[at..]).to_owned(),
            None => path,
        };
        let query = req.uri().query().unwrap_or_default().to_owned();
        match path.as_str() {
            "/_ping" => return Ok(reply(StatusCode::OK, "OK")),
            "/_calls" => {
                let calls = self.calls.load(Ordering::Relaxed);
                return Ok(ok_json(&json!({ "calls": calls })));
            }
            "/version" => {
                return Ok(ok_json(
                    &json!({"Version": "synthetic", "ApiVersion": "1.41",
                                        "Os": "linux", "Arch": "amd64"}),
                ))
            }
            _ => {}
        }
        let Some(i) = node else {
            return Ok(not_found(
                "dial a node's own address (127.1.x.y) for node calls",
            ));
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let method = req.method().clone();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let resp = match (&method, parts.as_slice()) {
            (&Method::GET, ["info"]) => ok_json(&Self::info(i, self.containers)),
            (&Method::GET, ["images", "json"]) => ok_json(&json!([{
                "Id": IMAGE_ID, "RepoTags": ["sim:latest"], "RepoDigests": [], "ParentId": "",
                "Created": 1_700_000_000, "Size": 1000, "SharedSize": -1, "VirtualSize": 1000,
                "Labels": null, "Containers": -1,
            }])),
            (&Method::GET, ["events"]) => {
                // Open until the relay closes it; lines only for what is
                // made, started or removed here.
                let (tx, rx) = mpsc::unbounded_channel();
                self.watchers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(i)
                    .or_default()
                    .push(tx);
                return Ok(Response::new(Events(rx).boxed()));
            }
            (&Method::GET, ["containers", "json"]) => ok_json(&self.listing(i, &query)),
            (&Method::GET, ["containers", id, "json"]) => match self.container(i, id) {
                Some((_, inspect)) => ok_json(&inspect),
                None => not_found(&format!("No such container: {id}")),
            },
            (&Method::POST, ["containers", "create"]) => {
                let Ok(body) = req.into_body().collect().await else {
                    return Ok(reply(StatusCode::BAD_REQUEST, r#"{"message":"body cut"}"#));
                };
                self.create(i, &query, &body.to_bytes())
            }
            (&Method::POST, ["containers", id, "start"]) => match self.container(i, id) {
                Some((_, inspect)) => {
                    let name = inspect["Name"].as_str().unwrap_or_default();
                    self.event(i, id, name.trim_start_matches('/'), "start");
                    reply(StatusCode::NO_CONTENT, "")
                }
                None => not_found(&format!("No such container: {id}")),
            },
            (&Method::DELETE, ["containers", id]) => {
                let gone = self.made().remove(*id);
                match gone {
                    Some(m) => {
                        self.event(i, id, &m.name, "destroy");
                        reply(StatusCode::NO_CONTENT, "")
                    }
                    None => not_found(&format!("No such container: {id}")),
                }
            }
            _ => not_found(&format!("{method} {path} is not simulated")),
        };
        Ok(resp)
    }
}

/// An event stream's body: the lines sent to it, until the responder
/// drops its end.
struct Events(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(http_body::Frame::data(l))))
    }
}

/// Runs the responder in this process, `containers` per node, on `port`
/// of every loopback address (0: any free port); prints the port on one
/// line. One thread. Exits when its standard input closes, so it never
/// outlives the run that started it.
pub fn serve(port: u16, containers: usize) -> Result<()> {
    crate::helper_proc::run(async move {
        // Every address, so one socket hears all of 127.0.0.0/8; anything
        // not dialed on loopback is closed unanswered.
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
        println!("{}", listener.local_addr()?.port());
        let fleet = Arc::new(Fleet {
            containers,
            calls: AtomicU64::new(0),
            made: Mutex::default(),
            next: AtomicU64::new(0),
            watchers: Mutex::default(),
        });
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let Ok(local) = tcp.local_addr() else {
                continue;
            };
            if !local.ip().is_loopback() {
                continue;
            }
            let _ = tcp.set_nodelay(true);
            let fleet = fleet.clone();
            tokio::spawn(async move {
                let node = node_of(local);
                let svc = service_fn(move |req| fleet.clone().answer(node, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

/// The responder's process, killed when dropped.
pub struct FleetProc {
    _proc: HelperProc,
    /// The port it listens on, on every loopback address.
    pub port: u16,
}

impl FleetProc {
    /// Starts `tunnelgate-loadtest synthetic-fleet` (the binary beside
    /// this one) with `containers` per node.
    pub fn start(containers: usize) -> Result<Self> {
        let args = ["synthetic-fleet", "--containers", &containers.to_string()].map(String::from);
        let (proc, line) = HelperProc::start(&args, "synthetic fleet responder")?;
        let port = line
            .parse()
            .with_context(|| format!("the responder said {line:?}, not its port"))?;
        Ok(Self { _proc: proc, port })
    }

    /// Calls answered for nodes so far.
    pub async fn calls(&self) -> Result<u64> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let text = crate::client::fetch_text(addr, "/_calls").await?;
        let v: Value = serde_json::from_str(&text)?;
        v["calls"].as_u64().context("no call count in /_calls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_told_by_the_address_dialed() {
        for i in [0, 1, 255, 256, 9_999, 70_000] {
            assert_eq!(node_of(node_addr(i, 1)), Some(i));
        }
        assert_eq!(node_of(SocketAddr::from(([127, 0, 0, 1], 1))), None);
    }
}
