//! Keeps a tenant's [`TenantView`] current: one task per tenant notices
//! nodes coming and going in the relay's tables; one task per online node
//! lists its facts, containers and images, then follows its events and
//! fetches again only the container or image list an event is about.
//! A bounded number of a tenant's nodes are listed at once, so a fleet
//! that comes online together fills in turn instead of all at once.
//! After a broken event stream the node is listed whole again, from the
//! time of the last listing, so nothing between is lost.
//!
//! The calls to nodes go through [`NodeCalls`] ([`super::reach`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;
use tunnelgate_proto::{NodeId, TenantId};

use super::cache::{self, TenantView};
use super::reach::{fetch_created, refresh_container, refresh_images, Failed, Member, NodeCalls};
use super::view::{Health, Node};
use crate::respond::Body;

/// How often the tenant's task looks for nodes that came or went.
const MEMBERS_INTERVAL: Duration = Duration::from_millis(500);
/// How long a failed listing waits before the next try.
const RETRY: Duration = Duration::from_secs(1);
/// A Docker event line longer than this is skipped.
const MAX_LINE: usize = 1 << 20;
/// How many of a tenant's nodes are listed at once. A listing is a
/// dozen calls or more; ten thousand nodes coming online together, all
/// listed at once, would share the relay's CPU so thinly that calls time
/// out, and a listing that fails starts again from the beginning: the
/// view might never fill. The rest wait their turn, each node's events
/// still followed as soon as its own listing is done.
const LISTINGS_AT_ONCE: usize = 128;

/// How a tenant's view acts on its own.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The placement's strategy, for rescheduling.
    pub strategy: super::StrategyName,
    /// How long a node may be offline before its containers that ask for
    /// it are rescheduled.
    pub reschedule_grace: Duration,
}

/// Starts keeping `view` of `tenant` current, until `stop`.
pub fn spawn_tenant(
    view: Arc<TenantView>,
    tenant: TenantId,
    calls: Arc<dyn NodeCalls>,
    settings: Settings,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    tasks.clone().spawn(async move {
        tokio::select! {
            () = run_tenant(view, tenant, calls, settings, tasks) => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Applies a member's facts from the relay's tables to its node.
fn apply_member(node: &mut Node, m: &Member) {
    if let Some(h) = &m.hostname {
        node.hostname.clone_from(h);
    }
    node.labels.clone_from(&m.labels);
    node.transport.clone_from(&m.transport);
    node.route.clone_from(&m.route);
    node.relay.clone_from(&m.relay);
    node.writable = m.writable;
    // An unlisted node stays so until its listing replaces it.
    if node.health != Health::Unlisted {
        node.health = cache::health(m.online, m.daemon_error.as_deref());
    }
}

async fn run_tenant(
    view: Arc<TenantView>,
    tenant: TenantId,
    calls: Arc<dyn NodeCalls>,
    settings: Settings,
    tasks: TaskTracker,
) {
    let mut rescheduler = super::reschedule::Rescheduler::default();
    let listings = Arc::new(tokio::sync::Semaphore::new(LISTINGS_AT_ONCE));
    let mut watchers = Watchers::default();
    let watchers = &mut watchers.0;
    loop {
        let members = calls.members(&tenant);
        let known: std::collections::HashSet<&NodeId> = members.iter().map(|m| &m.id).collect();
        for node in view.nodes() {
            if !known.contains(&node.id) {
                view.remove(&node.id);
            }
        }
        watchers.retain(|id, (task, _)| {
            let keep = known.contains(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for m in &members {
            let changed = watchers.get(&m.id).is_none_or(|(_, old)| old != m);
            if changed {
                view.update(&m.id, |node| apply_member(node, m));
            }
            match (m.online, watchers.contains_key(&m.id)) {
                (true, false) => {
                    let task = tasks.spawn(run_node(
                        view.clone(),
                        tenant.clone(),
                        m.clone(),
                        calls.clone(),
                        listings.clone(),
                    ));
                    watchers.insert(m.id.clone(), (task, m.clone()));
                }
                (false, true) => {
                    if let Some((task, _)) = watchers.remove(&m.id) {
                        task.abort();
                    }
                }
                _ => {
                    if let Some(w) = watchers.get_mut(&m.id) {
                        w.1 = m.clone();
                    }
                }
            }
            if !m.online && view.node(&m.id).is_none() {
                // Never listed: known only as an offline node.
                let mut node = Node::new(m.id.clone());
                apply_member(&mut node, m);
                view.put(node);
            }
        }
        rescheduler
            .tick(
                &view,
                &tenant,
                &members,
                &*calls,
                settings.strategy.strategy(),
                settings.reschedule_grace,
            )
            .await;
        tokio::time::sleep(MEMBERS_INTERVAL).await;
    }
}

/// The node watchers of one tenant, stopped when the tenant's task ends.
#[derive(Default)]
struct Watchers(HashMap<NodeId, (JoinHandle<()>, Member)>);

impl Drop for Watchers {
    fn drop(&mut self) {
        for (task, _) in self.0.values() {
            task.abort();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Lists node `m` whole, when one of `listings` is free, then follows
/// its events; again after a gap.
async fn run_node(
    view: Arc<TenantView>,
    tenant: TenantId,
    m: Member,
    calls: Arc<dyn NodeCalls>,
    listings: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let Ok(turn) = listings.acquire().await else {
            return;
        };
        // Events from one second before the listing began: what changes
        // while it runs is fetched again, never missed.
        let since = unix_now().saturating_sub(1);
        // Boxed, as is each event's handling below: the task lives as
        // long as the node is online, and is as large as its largest
        // state, which would be these, rarely live, at 10,000 nodes.
        let listed = Box::pin(list(&*calls, &tenant, &m)).await;
        drop(turn);
        match listed {
            Ok(node) => view.put(node),
            Err(why) => {
                debug!(node_id = %m.id, %why, "fleet view: listing failed; trying again");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let path = format!("/events?since={since}");
        match calls.stream(&tenant, &m.id, &path).await {
            Ok(body) => follow(&view, &*calls, &tenant, &m.id, body).await,
            Err(why) => debug!(node_id = %m.id, %why, "fleet view: events refused"),
        }
        tokio::time::sleep(RETRY / 4).await;
    }
}

/// One node's facts, containers and images, asked of it now.
async fn list(calls: &dyn NodeCalls, tenant: &TenantId, m: &Member) -> Result<Node, Failed> {
    let info = calls.get_json(tenant, &m.id, "/info").await?;
    let listing = calls
        .get_json(tenant, &m.id, "/containers/json?all=1")
        .await?;
    let images = calls.get_json(tenant, &m.id, "/images/json").await?;
    let mut node = Node::new(m.id.clone());
    apply_member(&mut node, m);
    if m.hostname.is_none() {
        node.hostname = info["Name"].as_str().unwrap_or_default().to_owned();
    }
    (node.facts, node.engine_labels) = cache::facts_from_info(&info);
    node.images = cache::images_from_list(&images);
    let mut containers = Vec::new();
    for entry in listing.as_array().into_iter().flatten() {
        let Some(id) = entry.get("Id").and_then(Value::as_str) else {
            continue;
        };
        let inspect = calls
            .get_json(tenant, &m.id, &format!("/containers/{id}/json"))
            .await?;
        containers.push(cache::container_from_inspect(&inspect, Some(entry.clone())));
    }
    node.set_containers(containers);
    Ok(node)
}

/// Reads a node's event stream to its end, keeping the view current.
async fn follow(
    view: &TenantView,
    calls: &dyn NodeCalls,
    tenant: &TenantId,
    node: &NodeId,
    mut body: Body,
) {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(end) = buf.iter().position(|b| *b == b'\n') {
            let line = buf.split_to(end + 1);
            if let Ok(event) = serde_json::from_slice::<Value>(&line) {
                Box::pin(on_event(view, calls, tenant, node, &event)).await;
            }
        }
        if buf.is_empty() {
            // Nothing kept between events.
            buf = BytesMut::new();
        }
        if buf.len() > MAX_LINE {
            buf.clear();
        }
    }
}

async fn on_event(
    view: &TenantView,
    calls: &dyn NodeCalls,
    tenant: &TenantId,
    node: &NodeId,
    event: &Value,
) {
    let kind = event["Type"].as_str().unwrap_or_default();
    let action = event["Action"].as_str().unwrap_or_default();
    let id = event["Actor"]["ID"]
        .as_str()
        .or_else(|| event["id"].as_str())
        .unwrap_or_default();
    match kind {
        "container" if action == "destroy" => view.remove_container(node, id),
        "container" if action == "create" => fetch_created(view, calls, tenant, node, id).await,
        // Calls into a container change nothing the view keeps.
        "container"
            if action.starts_with("exec_")
                || matches!(
                    action,
                    "attach" | "resize" | "top" | "archive-path" | "extract-to-dir" | "export"
                ) => {}
        "container" => refresh_container(view, calls, tenant, node, id).await,
        "image" => refresh_images(view, calls, tenant, node).await,
        _ => {}
    }
}

/// Brings each node's health in the view to what `members` (sorted by
/// id, as [`NodeCalls::members`] gives them) say, and puts each online
/// node not listed yet in as [`Health::Unlisted`], so reads name it as
/// skipped and placement rules it out saying why. One walk over both
/// sorted lists. Calls after the first listing use the cheaper
/// [`apply_online`].
pub fn apply_health(view: &TenantView, members: &[Member]) {
    let nodes = view.nodes();
    let mut have = nodes.iter().peekable();
    for m in members {
        while have.next_if(|n| n.id < m.id).is_some() {}
        let Some(node) = have.next_if(|n| n.id == m.id) else {
            if m.online {
                view.put_unlisted(&m.id);
            }
            continue;
        };
        let health = cache::health(m.online, m.daemon_error.as_deref());
        // An unlisted node stays so until its listing replaces it.
        if node.health != health && node.health != Health::Unlisted {
            view.update(&m.id, |n| n.health = health);
        }
    }
}

/// Brings the view's nodes online or offline as `online` (the nodes a
/// relay holds a session of now) says, and puts each online node not in
/// the view yet in as [`Health::Unlisted`]. A daemon's own state is left
/// as the tenant's task last found it. Cheaper than [`apply_health`]:
/// every fleet call runs it over every node.
pub fn apply_online(view: &TenantView, online: &std::collections::HashSet<NodeId>) {
    let mut seen = 0;
    for node in view.nodes() {
        let now = online.contains(&node.id);
        seen += usize::from(now);
        let was = node.health != Health::Offline;
        if now != was && node.health != Health::Unlisted {
            let health = if now {
                Health::Healthy
            } else {
                Health::Offline
            };
            view.update(&node.id, |n| n.health = health);
        }
    }
    if seen < online.len() {
        for id in online {
            view.put_unlisted(id);
        }
    }
}

/// Whether every online node of the view has been listed once (its
/// facts are known), so reads from it are whole.
pub fn is_listed(view: &TenantView, members: &[Member]) -> bool {
    members.iter().filter(|m| m.online).all(|m| {
        view.node(&m.id).is_some_and(|n| {
            !matches!(n.health, Health::Offline | Health::Unlisted) && n.facts != Default::default()
        })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fleet::reach::fake::{member, FakeCalls};
    use crate::fleet::view::Container;

    /// A node that has every container asked about.
    fn answering(path: &str) -> Value {
        let id = path
            .strip_prefix("/containers/")
            .and_then(|p| p.strip_suffix("/json"))
            .unwrap_or("new");
        match path.starts_with("/containers/json") {
            true => json!([{"Id": "new"}]),
            false => json!({"Id": id, "Name": format!("/{id}"), "Config": {}}),
        }
    }

    #[test]
    fn a_call_brings_nodes_online_or_offline_and_leaves_daemon_states() {
        let view = TenantView::default();
        let id = |s: &str| NodeId::new(s).unwrap();
        for (name, health) in [
            ("a", Health::Healthy),
            ("b", Health::Offline),
            ("c", Health::Unlisted),
            ("d", Health::DaemonDown("gone".into())),
        ] {
            let mut node = Node::new(id(name));
            node.health = health;
            view.put(node);
        }
        let online = ["b", "c", "d", "e"].map(id).into_iter().collect();
        apply_online(&view, &online);
        let health = |s: &str| view.node(&id(s)).unwrap().health.clone();
        assert_eq!(health("a"), Health::Offline);
        assert_eq!(health("b"), Health::Healthy);
        assert_eq!(health("c"), Health::Unlisted, "listed by its watcher only");
        assert_eq!(health("d"), Health::DaemonDown("gone".into()));
        assert_eq!(health("e"), Health::Unlisted, "a node just come");
    }

    #[tokio::test]
    async fn a_new_container_is_fetched_once_whoever_asks() {
        let view = TenantView::default();
        let id = NodeId::new("n1").unwrap();
        let mut node = Node::new(id.clone());
        node.put_container(Container {
            id: "old".into(),
            name: "old".into(),
            ..Default::default()
        });
        view.put(node);
        let (calls, tenant) = (FakeCalls::answering(answering), TenantId::new("t").unwrap());
        let event = |action: &str, id: &str| json!({"Type": "container", "Action": action, "Actor": {"ID": id}});

        on_event(&view, &calls, &tenant, &id, &event("create", "old")).await;
        assert_eq!(calls.gets(), 0);

        // The relay's own create and the node's event at once: one fetch.
        let created = event("create", "new");
        tokio::join!(
            on_event(&view, &calls, &tenant, &id, &created),
            fetch_created(&view, &calls, &tenant, &id, "new"),
        );
        assert_eq!(calls.gets(), 2, "inspect and listing");
        assert!(
            view.holds(&id, "new"),
            "a container made elsewhere is fetched"
        );

        on_event(&view, &calls, &tenant, &id, &event("start", "old")).await;
        assert_eq!(calls.gets(), 4, "other events still fetch");
    }

    #[tokio::test]
    async fn nodes_that_come_together_are_listed_a_bounded_number_at_once() {
        let nodes = 3 * LISTINGS_AT_ONCE;
        let members: Vec<Member> = (0..nodes)
            .map(|i| member(&format!("n{i:04}"), true))
            .collect();
        let answer = |path: &str| match path {
            "/info" => json!({"Name": "h", "Driver": "vfs"}),
            _ => answering(path),
        };
        let calls = Arc::new(FakeCalls::answering(answer).with_members(members.clone()));
        let (view, stop) = (Arc::new(TenantView::default()), CancellationToken::new());
        let settings = Settings {
            strategy: crate::fleet::StrategyName::Spread,
            reschedule_grace: Duration::from_secs(60),
        };
        let tenant = TenantId::new("t").unwrap();
        spawn_tenant(
            view.clone(),
            tenant,
            calls.clone(),
            settings,
            TaskTracker::new(),
            stop.clone(),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !is_listed(&view, &members) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "every node is listed in the end"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        // Each listing asks one thing at a time.
        assert!(
            calls.most_in_flight() <= LISTINGS_AT_ONCE,
            "{} calls were in flight at once",
            calls.most_in_flight()
        );
        assert!(calls.most_in_flight() > 1, "listings still overlap");
    }
}
