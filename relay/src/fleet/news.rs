//! The fleet's own events: what the relay did to a tenant's containers on
//! its own (rescheduling), in the shape of Docker events, for the events
//! fan-in to put among the nodes' own events. The last [`KEPT`] are kept,
//! so a reader that asks `since` (or `since` and `until`, as `docker events
//! --since 10m --until 0s` does) sees them after the fact too.
//!
//! No IO and no HTTP: this module only keeps the events and hands them
//! out. The one lock is held for a push or a copy, never across an
//! `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use tunnelgate_proto::NodeId;

/// Events kept for readers that ask for the past.
pub const KEPT: usize = 1024;

/// One event, with the nodes it names: a reader sees it only if it may
/// see every one of them.
#[derive(Debug, Clone)]
pub struct Said {
    pub nodes: Vec<NodeId>,
    pub nanos: u128,
    pub event: Value,
}

/// A tenant's fleet events, kept and broadcast.
#[derive(Debug)]
pub struct News {
    kept: Mutex<VecDeque<Arc<Said>>>,
    tx: broadcast::Sender<Arc<Said>>,
}

impl Default for News {
    fn default() -> Self {
        Self {
            kept: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(KEPT).0,
        }
    }
}

impl News {
    /// Keeps `said` and hands it to every reader following.
    pub fn say(&self, said: Said) {
        let said = Arc::new(said);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(said.clone());
        // Under the lock, so a reader that starts following meanwhile gets
        // each event once: in its copy of the past or from the channel.
        let _no_reader_is_fine = self.tx.send(said);
    }

    /// The events kept since `since` (unix nanoseconds; none without it),
    /// and a receiver for those said from now on.
    pub fn follow(&self, since: Option<u128>) -> (Vec<Arc<Said>>, broadcast::Receiver<Arc<Said>>) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let past = match since {
            Some(since) => kept.iter().filter(|s| s.nanos >= since).cloned().collect(),
            None => Vec::new(),
        };
        (past, self.tx.subscribe())
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// An event the relay says itself (of a node, or of a container the
/// fleet moved), in the shape of a Docker event: `Action` on the actor
/// `actor` of type `kind`, of node `node`, with `attributes` beside
/// `node`, at `nanos`.
pub fn relay_event(
    kind: &str,
    action: &str,
    actor: &str,
    node: &NodeId,
    attributes: &[(&str, &str)],
    nanos: u128,
) -> Value {
    let mut attrs: Map<String, Value> = attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    attrs.insert("node".into(), Value::String(node.to_string()));
    let mut event = json!({
        "Type": kind, "Action": action, "status": action,
        "Actor": {"ID": actor, "Attributes": attrs},
        "scope": "tunnelgate", "time": nanos / 1_000_000_000, "timeNano": nanos,
        "node": node.to_string(),
    });
    if kind == "container" {
        event["id"] = Value::String(actor.to_owned());
    }
    event
}

/// A container event of the fleet's own: `Action` on container `id`,
/// said of node `node` (and `others`), with `attributes` (the name among
/// them) beside `node`.
pub fn container_event(
    action: &str,
    id: &str,
    node: &NodeId,
    attributes: &[(&str, &str)],
    others: &[&NodeId],
) -> Said {
    let nanos = now_nanos();
    let event = relay_event("container", action, id, node, attributes, nanos);
    let mut nodes = vec![node.clone()];
    nodes.extend(others.iter().map(|n| (*n).clone()));
    Said {
        nodes,
        nanos,
        event,
    }
}

/// Docker's `since`/`until` (`SECONDS[.NANOS]`, as the CLI sends them) in
/// unix nanoseconds; `None` for what is not that.
pub fn unix_nanos(text: &str) -> Option<u128> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: u128 = secs.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: u128 = format!("{frac:0<9}").parse().ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// Whether `event` passes the Docker events `filters` (JSON, as sent):
/// `type`, `event` and `container` (id, id prefix or name) are read;
/// any other filter key rules a fleet event out, since it cannot say
/// whether it matches, and a filter narrows.
pub fn passes(filters: Option<&Value>, event: &Value) -> bool {
    let Some(Value::Object(filters)) = filters else {
        return true;
    };
    filters.iter().all(|(key, wanted)| {
        let wanted: Vec<&str> = match wanted {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            Value::Object(o) => o.keys().map(String::as_str).collect(),
            _ => Vec::new(),
        };
        let field = |path: &[&str]| {
            path.iter()
                .try_fold(event, |v, k| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        match key.as_str() {
            "type" => wanted.contains(&field(&["Type"]).as_str()),
            "event" => wanted.contains(&field(&["Action"]).as_str()),
            "container" => {
                let id = field(&["Actor", "ID"]);
                let name = field(&["Actor", "Attributes", "name"]);
                wanted
                    .iter()
                    .any(|w| *w == name || (!w.is_empty() && id.starts_with(w)))
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    #[test]
    fn a_reader_gets_the_past_since_it_asked_and_then_what_comes() {
        let news = News::default();
        news.say(container_event("reschedule", "c1", &node("n2"), &[], &[]));
        let (none, _) = news.follow(None);
        assert!(none.is_empty(), "no since, no past");
        let (past, mut rx) = news.follow(Some(0));
        assert_eq!(past.len(), 1);
        news.say(container_event("reschedule", "c2", &node("n2"), &[], &[]));
        assert_eq!(rx.try_recv().unwrap().event["id"], "c2");
        let late = past[0].nanos + 1;
        let (past, _) = news.follow(Some(late));
        assert_eq!(past.len(), 1, "only c2 is since then");
    }

    #[test]
    fn only_the_last_are_kept() {
        let news = News::default();
        for i in 0..KEPT + 5 {
            news.say(container_event(
                "reschedule",
                &format!("c{i}"),
                &node("n"),
                &[],
                &[],
            ));
        }
        let (past, _) = news.follow(Some(0));
        assert_eq!(past.len(), KEPT);
        assert_eq!(past[0].event["id"], "c5");
    }

    #[test]
    fn since_is_read_as_docker_sends_it() {
        assert_eq!(unix_nanos("12"), Some(12_000_000_000));
        assert_eq!(unix_nanos("12.5"), Some(12_500_000_000));
        assert_eq!(unix_nanos("12.000000007"), Some(12_000_000_007));
        assert_eq!(unix_nanos("12.0000000071"), None);
        assert_eq!(unix_nanos("10m"), None);
    }

    #[test]
    fn filters_narrow_and_an_unknown_one_rules_out() {
        let e = container_event("reschedule", "abcdef", &node("n2"), &[("name", "web")], &[]).event;
        let f = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert!(passes(None, &e));
        assert!(passes(Some(&f(r#"{"type":["container"]}"#)), &e));
        assert!(passes(Some(&f(r#"{"type":{"container":true}}"#)), &e));
        assert!(!passes(Some(&f(r#"{"type":["image"]}"#)), &e));
        assert!(passes(Some(&f(r#"{"event":["reschedule","die"]}"#)), &e));
        assert!(!passes(Some(&f(r#"{"event":["die"]}"#)), &e));
        assert!(passes(Some(&f(r#"{"container":["web"]}"#)), &e));
        assert!(passes(Some(&f(r#"{"container":["abc"]}"#)), &e));
        assert!(!passes(Some(&f(r#"{"container":["db"]}"#)), &e));
        assert!(!passes(Some(&f(r#"{"label":["a=b"]}"#)), &e));
    }
}
