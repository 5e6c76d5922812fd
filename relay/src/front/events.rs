//! The events fan-in: one stream, as JSON lines, of the Docker events of
//! every node of the caller's tenant (`GET /v1/events`, and `docker
//! events` on the fleet endpoint), each tagged with its node (`"node"`,
//! and `node` among the actor's attributes, which `docker events` prints),
//! plus node events: `connected`, `disconnected`, `daemon_unreachable`,
//! `daemon_back` (`"Type": "node"`), and the fleet's own container events
//! (`reschedule`, `reschedule_failed`, `reschedule_cleanup`; kept, so
//! `since` finds them after the fact) of the nodes the caller may see.
//!
//! `since`, `until` and `filters` go to each node as the client sent them.
//! Nodes that come online while the stream is open are followed from
//! then; a node that drops is announced and does not end the stream; a
//! node's stream that breaks while the node is still there is followed
//! again from its last event. With `until` the stream ends once every
//! node's has.
//!
//! Memory is bounded: at most `max_events_backlog` lines wait for a
//! reader; one further behind is cut with a final line saying so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::debug;
use tunnelgate_proto::NodeId;

use super::asks::{ask, Caller};
use super::context::Front;
use super::routes::query_pairs;
use crate::fleet::news::{self, Said};
use crate::metrics::Limit;
use crate::respond::{Body, ChannelBody, LastWord};

/// How often the fan-in looks for nodes that came or went.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
/// A Docker event line longer than this is dropped (Docker's are < 4 KiB).
const MAX_LINE: usize = 1 << 20;

/// The lines waiting for the reader, and what to say last.
struct Outlet {
    tx: mpsc::Sender<Bytes>,
    last: Arc<LastWord>,
    front: Arc<Front>,
}

impl Outlet {
    /// Queues one line; `false` once the stream is over (the reader left
    /// or was cut).
    fn send(&self, line: Value) -> bool {
        if self.last.is_said() {
            return false;
        }
        let mut text = line.to_string().into_bytes();
        text.push(b'\n');
        match self.tx.try_send(Bytes::from(text)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let max = self.front.config.limits.max_events_backlog;
                self.front.metrics.limit_hit(Limit::EventsBacklog);
                let reason = format!(
                    "the reader fell {max} events behind, so the relay ends this stream \
                     (max_events_backlog) rather than hold more; read faster, or open it again \
                     with since=<time of the last event read>"
                );
                let line = json!({"Type": "error", "Action": "cut", "message": reason,
                                  "error": reason, "time": news::now_nanos() / 1_000_000_000});
                self.last.say(Bytes::from(format!("{line}\n")));
                false
            }
        }
    }

    fn is_over(&self) -> bool {
        self.tx.is_closed() || self.last.is_said()
    }
}

/// A node event, in the shape of a Docker event.
fn node_event(node: &NodeId, action: &str, detail: Option<&str>) -> Value {
    let error: Vec<(&str, &str)> = detail.map(|d| ("error", d)).into_iter().collect();
    news::relay_event(
        "node",
        action,
        node.as_str(),
        node,
        &error,
        news::now_nanos(),
    )
}

/// The query as the client sent it, with `since` replaced when given.
fn query_with_since(query: &[(String, String)], since: Option<&str>) -> String {
    let mut pairs: Vec<String> = query
        .iter()
        .filter(|(k, _)| since.is_none() || k != "since")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if let Some(s) = since {
        pairs.push(format!("since={s}"));
    }
    pairs.join("&")
}

/// Starts the fan-in for `caller` and answers with its stream.
pub(super) fn fan_in(front: Arc<Front>, caller: Caller, query: Option<&str>) -> Response<Body> {
    let query: Vec<(String, String)> = query_pairs(query)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let (tx, rx) = mpsc::channel(front.config.limits.max_events_backlog);
    let last = Arc::new(LastWord::default());
    let outlet = Arc::new(Outlet {
        tx,
        last: last.clone(),
        front: front.clone(),
    });
    front
        .tasks
        .spawn(watch(front.clone(), caller, query, outlet));
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(ChannelBody::boxed_body(rx, last))
        .expect("static response parts are valid")
}

/// What the fan-in knows of one node.
struct Followed {
    online: bool,
    daemon_reachable: Option<bool>,
    follower: Option<JoinHandle<()>>,
    /// `timeNano` of the last event relayed, to follow again from there.
    last: Arc<Mutex<Option<u128>>>,
}

/// Follows the tenant's nodes until the reader leaves, is cut, or (with
/// `until`) every node's stream has ended.
async fn watch(
    front: Arc<Front>,
    caller: Caller,
    query: Vec<(String, String)>,
    outlet: Arc<Outlet>,
) {
    let bounded = query.iter().any(|(k, _)| k == "until");
    let mut news = FleetNews::open(&front, &caller, &query);
    let mut known: HashMap<NodeId, Followed> = HashMap::new();
    let mut first = true;
    let mut ticker = tokio::time::interval(WATCH_INTERVAL);
    // The stream ends when the caller's credential stops standing.
    let cut = front.cut_for(caller.principal(), Some("application/json"));
    loop {
        ticker.tick().await;
        if outlet.is_over() {
            break;
        }
        if let Some(cut) = cut.as_ref().filter(|c| c.token.is_cancelled()) {
            if let Some(word) = (cut.last_word)(&[]) {
                outlet.last.say(word);
            }
            break;
        }
        let daemons: HashMap<NodeId, (bool, Option<String>)> = front
            .sessions
            .views(caller.tenant(), front.state.relay_id())
            .into_iter()
            .map(|v| (v.node_id, (v.daemon_reachable, v.daemon_error)))
            .collect();
        let fleet = front.fleet_of(caller.principal());
        if let Some(news) = news.as_mut() {
            news.relay(&fleet, &outlet);
        }
        for (node, held) in &fleet {
            let online = held.is_online();
            let entry = known.entry(node.clone()).or_insert_with(|| Followed {
                online: false,
                daemon_reachable: None,
                follower: None,
                last: Arc::default(),
            });
            if online && !entry.online && !first {
                outlet.send(node_event(node, "connected", None));
            }
            if !online && entry.online {
                outlet.send(node_event(node, "disconnected", None));
                if let Some(f) = entry.follower.take() {
                    f.abort();
                }
            }
            entry.online = online;
            if let Some((now, error)) = daemons.get(node) {
                let now = *now;
                match (entry.daemon_reachable, now) {
                    (Some(true), false) => {
                        outlet.send(node_event(node, "daemon_unreachable", error.as_deref()));
                    }
                    (Some(false), true) => {
                        outlet.send(node_event(node, "daemon_back", None));
                    }
                    _ => {}
                }
                entry.daemon_reachable = Some(now);
            }
            let running = entry.follower.as_ref().is_some_and(|f| !f.is_finished());
            // With `until`, each node's stream is opened once and ends by
            // itself; without, a broken one is followed again.
            if online && !running && (!bounded || first) {
                let since = entry
                    .last
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map(|n| {
                        let n = n + 1;
                        format!("{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
                    });
                let path = format!("/events?{}", query_with_since(&query, since.as_deref()));
                entry.follower = Some(tokio::spawn(follow(
                    front.clone(),
                    caller.clone(),
                    node.clone(),
                    path,
                    outlet.clone(),
                    entry.last.clone(),
                )));
            }
        }
        for (node, entry) in known.iter_mut() {
            if entry.online && !fleet.iter().any(|(n, _)| n == node) {
                entry.online = false;
                outlet.send(node_event(node, "disconnected", None));
            }
        }
        first = false;
        if bounded
            && known
                .values()
                .all(|e| e.follower.as_ref().is_none_or(|f| f.is_finished()))
        {
            break;
        }
    }
    for entry in known.values() {
        if let Some(f) = &entry.follower {
            f.abort();
        }
    }
}

/// The fleet's own events for one reader: those kept since its `since`
/// (up to its `until`) first, then each as it is said.
struct FleetNews {
    past: Vec<Arc<Said>>,
    rx: broadcast::Receiver<Arc<Said>>,
    until: Option<u128>,
    filters: Option<Value>,
}

impl FleetNews {
    /// `None` when the tenant's fleet endpoint was never used: then the
    /// fleet has done nothing on its own.
    fn open(front: &Front, caller: &Caller, query: &[(String, String)]) -> Option<Self> {
        let view = front.fleet.get(caller.tenant())?;
        let decoded = |key: &str| {
            query.iter().find(|(k, _)| k == key).map(|(_, v)| {
                form_urlencoded::parse(format!("v={v}").as_bytes())
                    .map(|(_, v)| v.into_owned())
                    .next()
                    .unwrap_or_default()
            })
        };
        let since = decoded("since").and_then(|s| news::unix_nanos(&s));
        let until = decoded("until").and_then(|s| news::unix_nanos(&s));
        let filters = decoded("filters").and_then(|f| serde_json::from_str(&f).ok());
        let (past, rx) = view.news.follow(since);
        Some(Self {
            past,
            rx,
            until,
            filters,
        })
    }

    /// Sends what came since the last look, of nodes in `fleet` only.
    fn relay(&mut self, fleet: &[(NodeId, crate::router::Held)], outlet: &Outlet) {
        let mut due = std::mem::take(&mut self.past);
        loop {
            match self.rx.try_recv() {
                Ok(said) => due.push(said),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    debug!(missed = n, "an events reader missed fleet events");
                }
                Err(_) => break,
            }
        }
        for said in due {
            let seen = said.nodes.iter().all(|n| fleet.iter().any(|(f, _)| f == n));
            let in_time = self.until.is_none_or(|u| said.nanos <= u);
            if seen && in_time && news::passes(self.filters.as_ref(), &said.event) {
                outlet.send(said.event.clone());
            }
        }
    }
}

/// Relays one node's Docker events, tagged, until its stream ends.
async fn follow(
    front: Arc<Front>,
    caller: Caller,
    node: NodeId,
    path: String,
    outlet: Arc<Outlet>,
    last: Arc<Mutex<Option<u128>>>,
) {
    let resp = match ask(&front, &caller, &node, &path).await {
        Ok(resp) if resp.status().is_success() => resp,
        Ok(resp) => {
            debug!(%node, status = %resp.status(), "a node refused its events stream");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
        Err(e) => {
            debug!(%node, error = %e, "a node's events stream did not open");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    let mut body = resp.into_body();
    let mut pending = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line = pending.split_to(at + 1);
            let Ok(mut event) = serde_json::from_slice::<Value>(&line[..at]) else {
                continue;
            };
            if let Some(nanos) = event.get("timeNano").and_then(Value::as_u64) {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(u128::from(nanos));
            }
            event["node"] = Value::String(node.to_string());
            if let Some(attrs) = event
                .get_mut("Actor")
                .and_then(|a| a.get_mut("Attributes"))
                .and_then(Value::as_object_mut)
            {
                attrs.insert("node".into(), Value::String(node.to_string()));
            }
            if !outlet.send(event) {
                return;
            }
        }
        if pending.len() > MAX_LINE {
            pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_replaced_and_the_rest_passed_as_sent() {
        let q = vec![
            ("since".to_owned(), "100".to_owned()),
            (
                "filters".to_owned(),
                "%7B%22type%22%3A%5B%22container%22%5D%7D".to_owned(),
            ),
        ];
        assert_eq!(
            query_with_since(&q, Some("200.000000001")),
            "filters=%7B%22type%22%3A%5B%22container%22%5D%7D&since=200.000000001"
        );
        assert_eq!(
            query_with_since(&q, None),
            "since=100&filters=%7B%22type%22%3A%5B%22container%22%5D%7D"
        );
    }
}
