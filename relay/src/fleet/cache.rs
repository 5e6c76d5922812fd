//! The fleet's cached view, per tenant: every node's facts, containers and
//! images, kept by [`super::watch`] from one listing per node (at connect
//! and after a gap) and the node's events, and by the front after each
//! write it carries (read-your-writes). Placement, `ps`, `images` and
//! `info` on the fleet answer from here, with no call to any node.
//!
//! Nodes are kept as immutable snapshots (`Arc<Node>`), replaced whole on
//! a change, so a reader copies a list of pointers and never waits on a
//! writer for longer than that. Locks here are std locks held for a map
//! operation, never across an `.await`. This module does no IO; it turns
//! the daemon's JSON into [`Node`] facts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;
use tokio::sync::watch;
use tunnelgate_proto::{NodeId, TenantId};

use super::ask;
use super::index::{constraint_stamp, Index};
use super::news::News;
use super::view::{Container, Facts, Health, Image, Node, Times};

/// Exec ids kept per tenant before the oldest are forgotten.
const MAX_EXECS: usize = 65_536;

/// The cached views of every tenant whose fleet endpoint was used.
#[derive(Debug, Default)]
pub struct Cache {
    tenants: RwLock<HashMap<TenantId, Arc<TenantView>>>,
}

/// One tenant's nodes, and where its exec instances are.
#[derive(Debug, Default)]
pub struct TenantView {
    nodes: RwLock<Nodes>,
    execs: Mutex<Execs>,
    /// New containers being fetched into the view, by node and id.
    fetching: Mutex<HashMap<(NodeId, String), watch::Receiver<()>>>,
    /// Whether every node online at its first call was listed (or the
    /// wait for that ended), so later calls need not wait.
    listed: std::sync::atomic::AtomicBool,
    /// The relay's online generation when a call last brought the view's
    /// nodes online or offline: while it stays, no call need look again.
    online_seen: std::sync::atomic::AtomicU64,
    /// What the fleet did on its own, for the events fan-in.
    pub news: News,
}

/// A tenant's nodes by id, the names of their containers, and which
/// nodes have which value of a constraint's key.
#[derive(Debug, Default)]
struct Nodes {
    by_id: BTreeMap<NodeId, Arc<Node>>,
    names: Names,
    /// Cleared whenever a node comes or goes, or changes what a
    /// constraint reads; every change of a node passes here.
    index: Index,
}

/// How many of the fleet's containers bear each name: a create's check
/// that its name is free is then one lookup, not a walk over every
/// container (100,000 at 10,000 nodes). A name whose count falls to
/// zero stays until such names outnumber the others, so a container
/// that is replaced under its own name costs no allocation.
#[derive(Debug, Default)]
struct Names {
    count: HashMap<Box<str>, u32>,
    zeros: usize,
}

impl Names {
    fn add(&mut self, node: &Node) {
        for c in node.containers() {
            match self.count.get_mut(c.name.as_str()) {
                Some(n) => {
                    self.zeros -= usize::from(*n == 0);
                    *n += 1;
                }
                None => {
                    self.count.insert(c.name.as_str().into(), 1);
                }
            }
        }
    }

    fn take(&mut self, node: &Node) {
        for c in node.containers() {
            if let Some(n) = self.count.get_mut(c.name.as_str()) {
                if *n > 0 {
                    *n -= 1;
                    self.zeros += usize::from(*n == 0);
                }
            }
        }
        if self.zeros > 64 && self.zeros > self.count.len() / 2 {
            self.count.retain(|_, n| *n > 0);
            self.zeros = 0;
        }
    }

    fn has(&self, name: &str) -> bool {
        self.count.get(name).is_some_and(|n| *n > 0)
    }
}

/// What [`TenantView::begin_fetch`] found.
pub enum Begun<'a> {
    /// This caller fetches; the mark goes when this is dropped.
    Mine(Fetching<'a>),
    /// Another fetch is under way: its end is told here.
    Theirs(watch::Receiver<()>),
}

/// A fetch under way; dropping it ends the mark and wakes those waiting.
pub struct Fetching<'a> {
    view: &'a TenantView,
    key: (NodeId, String),
    _done: watch::Sender<()>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        let mut fetching = self.view.fetching.lock().unwrap_or_else(|p| p.into_inner());
        fetching.remove(&self.key);
        // `_done` drops after this, waking the waiters once the mark is gone.
    }
}

/// Which node made each exec instance, oldest forgotten first.
#[derive(Debug, Default)]
struct Execs {
    by_id: HashMap<String, NodeId>,
    order: std::collections::VecDeque<String>,
}

impl Cache {
    /// The view of `tenant`, and whether it was made just now (so its
    /// watcher must be started).
    pub fn tenant(&self, tenant: &TenantId) -> (Arc<TenantView>, bool) {
        if let Some(view) = self.read().get(tenant) {
            return (view.clone(), false);
        }
        let mut tenants = self.tenants.write().unwrap_or_else(|p| p.into_inner());
        match tenants.get(tenant) {
            Some(view) => (view.clone(), false),
            None => {
                let view = Arc::new(TenantView::default());
                tenants.insert(tenant.clone(), view.clone());
                (view, true)
            }
        }
    }

    /// The view of `tenant` if its fleet endpoint was used.
    pub fn get(&self, tenant: &TenantId) -> Option<Arc<TenantView>> {
        self.read().get(tenant).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TenantId, Arc<TenantView>>> {
        self.tenants.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl TenantView {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Nodes> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Nodes> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every node, sorted by id.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.read().by_id.values().cloned().collect()
    }

    /// Whether a container of some node is named `name`.
    pub fn has_name(&self, name: &str) -> bool {
        self.read().names.has(name)
    }

    /// Runs `f` over every node, sorted by id, and the index of their
    /// constraint keys, borrowed under the view's read lock: a decision
    /// over all of them (a placement) then takes no share of each, which
    /// over 10,000 nodes was 10,000 reference counts up and down per
    /// create. Writers wait meanwhile, so `f` must be quick and must not
    /// block.
    pub fn with_nodes<R>(&self, f: impl FnOnce(&[&Node], &Index) -> R) -> R {
        let nodes = self.read();
        let all: Vec<&Node> = nodes.by_id.values().map(|n| n.as_ref()).collect();
        f(&all, &nodes.index)
    }

    /// One node.
    pub fn node(&self, id: &NodeId) -> Option<Arc<Node>> {
        self.read().by_id.get(id).cloned()
    }

    /// Whether its first listing was waited for already.
    pub fn was_listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notes that its first listing was waited for.
    pub fn set_listed(&self) {
        self.listed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Notes that the view's online states were brought to the relay's
    /// online `generation`; whether they were at another one before.
    pub fn see_online(&self, generation: u64) -> bool {
        self.online_seen
            .swap(generation, std::sync::atomic::Ordering::AcqRel)
            != generation
    }

    /// Whether node `id` has container `container` (a full id).
    pub fn holds(&self, id: &NodeId, container: &str) -> bool {
        self.read()
            .by_id
            .get(id)
            .is_some_and(|n| n.containers().iter().any(|c| c.id == container))
    }

    /// Marks container `container` of node `id` as being fetched, unless
    /// it already is: then the fetch under way is waited on instead.
    pub fn begin_fetch(&self, id: &NodeId, container: &str) -> Begun<'_> {
        let key = (id.clone(), container.to_owned());
        let mut fetching = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = fetching.get(&key) {
            return Begun::Theirs(done.clone());
        }
        let (tx, rx) = watch::channel(());
        fetching.insert(key.clone(), rx);
        Begun::Mine(Fetching {
            view: self,
            key,
            _done: tx,
        })
    }

    /// Puts a whole node in, or replaces it.
    pub fn put(&self, node: Node) {
        let mut nodes = self.write();
        nodes.names.add(&node);
        let stamp = constraint_stamp(&node);
        match nodes.by_id.insert(node.id.clone(), Arc::new(node)) {
            Some(old) => {
                nodes.names.take(&old);
                if constraint_stamp(&old) != stamp {
                    nodes.index.clear();
                }
            }
            None => nodes.index.clear(),
        }
    }

    /// Puts node `id` in as [`Health::Unlisted`] unless the view has it.
    pub fn put_unlisted(&self, id: &NodeId) {
        let mut nodes = self.write();
        if nodes.by_id.contains_key(id) {
            return;
        }
        let mut node = Node::new(id.clone());
        node.health = Health::Unlisted;
        nodes.by_id.insert(id.clone(), Arc::new(node));
        nodes.index.clear();
    }

    /// Applies `f` to a copy of node `id` and puts the copy in; nothing
    /// when the node is not known.
    pub fn update(&self, id: &NodeId, f: impl FnOnce(&mut Node)) {
        let mut nodes = self.write();
        let Nodes {
            by_id,
            names,
            index,
        } = &mut *nodes;
        if let Some(node) = by_id.get_mut(id) {
            names.take(node);
            let stamp = constraint_stamp(node);
            f(Arc::make_mut(node));
            names.add(node);
            if constraint_stamp(node) != stamp {
                index.clear();
            }
        }
    }

    /// Forgets node `id`.
    pub fn remove(&self, id: &NodeId) {
        let mut nodes = self.write();
        if let Some(old) = nodes.by_id.remove(id) {
            nodes.names.take(&old);
            nodes.index.clear();
        }
    }

    /// Puts container `c` on node `id`, replacing the one with its id.
    pub fn put_container(&self, id: &NodeId, c: Container) {
        self.update(id, |node| node.put_container(c));
    }

    /// Removes container `container` (a full id) from node `id`.
    pub fn remove_container(&self, id: &NodeId, container: &str) {
        self.update(id, |node| node.remove_container(container));
    }

    /// Remembers that node `node` made exec instance `exec`.
    pub fn put_exec(&self, exec: String, node: NodeId) {
        let mut execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.by_id.insert(exec.clone(), node).is_none() {
            execs.order.push_back(exec);
        }
        while execs.order.len() > MAX_EXECS {
            if let Some(old) = execs.order.pop_front() {
                execs.by_id.remove(&old);
            }
        }
    }

    /// The node that made exec instance `exec`.
    pub fn exec_node(&self, exec: &str) -> Option<NodeId> {
        let execs = self.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs.by_id.get(exec).cloned()
    }
}

/// Where a container of the fleet is, by the name a caller gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// On this node, with this full id.
    At(NodeId, String),
    /// Nowhere in the view.
    Missing,
    /// On more than one node, or more than one id with this prefix.
    Ambiguous(Vec<NodeId>),
}

/// Finds a container by `node/name`, bare name (unique in the fleet), full
/// id or unique id prefix, as Docker resolves one on a single host.
pub fn find(nodes: &[Arc<Node>], name: &str) -> Found {
    let name = name.trim_start_matches('/');
    if let Some((node, bare)) = name.split_once('/') {
        return nodes
            .iter()
            .find(|n| n.id.as_str() == node)
            .and_then(|n| Some(Found::At(n.id.clone(), n.container(bare)?.id.clone())))
            .unwrap_or(Found::Missing);
    }
    if name.is_empty() {
        return Found::Missing;
    }
    let healthy = |id: &NodeId| {
        nodes
            .iter()
            .any(|n| &n.id == id && n.health == Health::Healthy)
    };
    let pick_one = |hits: Vec<(&NodeId, &Container)>| match hits.as_slice() {
        [] => None,
        [(n, c)] => Some(Found::At((*n).clone(), c.id.clone())),
        many => Some(Found::Ambiguous(
            many.iter().map(|(n, _)| (*n).clone()).collect(),
        )),
    };
    let pick = |mut hits: Vec<(&NodeId, &Container)>| {
        // A name on an offline node and on a live one (a rescheduled
        // container whose old node has not come back): the live one.
        if hits.len() > 1 && hits.iter().filter(|(n, _)| healthy(n)).count() == 1 {
            hits.retain(|(n, _)| healthy(n));
        }
        pick_one(hits)
    };
    let every = || {
        nodes
            .iter()
            .flat_map(|n| n.containers().iter().map(move |c| (&n.id, c)))
    };
    // Docker's order: a full id, then a name, then an id prefix.
    pick(every().filter(|(_, c)| c.id == name).collect())
        .or_else(|| pick(every().filter(|(_, c)| c.name == name).collect()))
        .or_else(|| pick(every().filter(|(_, c)| c.id.starts_with(name)).collect()))
        .unwrap_or(Found::Missing)
}

// === From the daemon's JSON ===

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect()
}

/// A node's facts and daemon labels from its `GET /info`.
pub fn facts_from_info(info: &Value) -> (Facts, BTreeMap<String, String>) {
    let facts = Facts {
        ncpu: info.get("NCPU").and_then(Value::as_u64).unwrap_or(0),
        mem_total: info.get("MemTotal").and_then(Value::as_u64).unwrap_or(0),
        storage_driver: text(info, "Driver"),
        kernel_version: text(info, "KernelVersion"),
        operating_system: text(info, "OperatingSystem"),
        architecture: text(info, "Architecture"),
        server_version: text(info, "ServerVersion"),
    };
    let labels = info
        .get("Labels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect();
    (facts, labels)
}

/// A container from its `GET /containers/<id>/json`, with its entry of
/// `GET /containers/json` (what `ps` answers) when there is one.
pub fn container_from_inspect(inspect: &Value, listing: Option<Value>) -> Container {
    let config = inspect.get("Config");
    let host_config = inspect.get("HostConfig");
    let state = inspect.get("State");
    let running = state
        .and_then(|s| s.get("Running"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Container {
        id: text(inspect, "Id"),
        name: text(inspect, "Name").trim_start_matches('/').to_owned(),
        image: config.map(|c| text(c, "Image")).unwrap_or_default(),
        image_id: text(inspect, "Image"),
        labels: string_map(config.and_then(|c| c.get("Labels")))
            .into_iter()
            .collect(),
        nano_cpus: ask::nano_cpus(host_config),
        memory: host_config
            .and_then(|h| h.get("Memory"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        host_ports: ask::host_ports(host_config, config.and_then(|c| c.get("ExposedPorts"))),
        running,
        state: state.map(|s| text(s, "Status")).unwrap_or_default(),
        times: state.and_then(times),
        listing: listing.map(|l| Arc::from(l.to_string())),
        respawn: respawn_spec(inspect),
    }
}

/// A container's start and stop times from its inspect's `State`.
fn times(state: &Value) -> Option<Times> {
    let at = |key: &str| -> Option<std::time::SystemTime> {
        let text = state.get(key)?.as_str()?;
        // Docker writes 0001-01-01T00:00:00Z for never; that reads as
        // long ago, which is what Docker shows for it too.
        humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
            .ok()
            .or(Some(std::time::UNIX_EPOCH))
    };
    Some(Times {
        started: at("StartedAt")?,
        finished: at("FinishedAt")?,
        exit_code: state.get("ExitCode").and_then(Value::as_i64).unwrap_or(0),
    })
}

/// The create body that makes a container again, if it asks for it: as
/// Swarm did, its `Config` with its `HostConfig`.
fn respawn_spec(inspect: &Value) -> Option<Arc<str>> {
    let config = inspect.get("Config")?;
    let policies = config.get("Labels")?.get(ask::RESCHEDULE_LABEL)?.as_str()?;
    if !policies.contains("on-node-failure") {
        return None;
    }
    let mut body = config.clone();
    let obj = body.as_object_mut()?;
    obj.insert("HostConfig".into(), inspect.get("HostConfig")?.clone());
    // The node's own name for the host is not the new node's.
    obj.remove("Hostname");
    Some(Arc::from(body.to_string()))
}

/// A node's images from its `GET /images/json`.
pub fn images_from_list(list: &Value) -> Vec<Image> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|i| Image {
            id: text(i, "Id"),
            tags: i
                .get("RepoTags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|t| !t.starts_with("<none>"))
                .map(str::to_owned)
                .collect(),
            listing: Some(std::sync::Arc::from(i.to_string())),
        })
        .collect()
}

/// The health a node's session reports.
pub fn health(online: bool, daemon_error: Option<&str>) -> Health {
    match (online, daemon_error) {
        (false, _) => Health::Offline,
        (true, Some(e)) => Health::DaemonDown(e.to_owned()),
        (true, None) => Health::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn node(id: &str, containers: &[(&str, &str)]) -> Arc<Node> {
        let mut n = Node::new(NodeId::new(id).unwrap());
        for (name, cid) in containers {
            n.put_container(Container {
                id: (*cid).into(),
                name: (*name).into(),
                ..Default::default()
            });
        }
        Arc::new(n)
    }

    #[test]
    fn the_names_in_use_follow_every_way_a_node_changes() {
        let view = TenantView::default();
        let a = NodeId::new("a").unwrap();
        view.put(Arc::unwrap_or_clone(node("a", &[("web", "aaaa1111")])));
        view.put(Arc::unwrap_or_clone(node("b", &[("web", "bbbb2222")])));
        assert!(view.has_name("web") && !view.has_name("db"));
        view.put_container(
            &a,
            Container {
                id: "cccc3333".into(),
                name: "db".into(),
                ..Default::default()
            },
        );
        assert!(view.has_name("db"), "a container put in names its name");
        view.remove_container(&a, "cccc3333");
        assert!(!view.has_name("db"), "a container removed frees its name");
        view.remove(&a);
        assert!(view.has_name("web"), "b still has a web");
        view.put(Arc::unwrap_or_clone(node("b", &[("api", "bbbb2222")])));
        assert!(!view.has_name("web"), "a node replaced frees its old names");
        assert!(view.has_name("api"));
        // Many names come and go: the zeros are swept, the live stay.
        for i in 0..500 {
            let name = format!("tmp-{i}");
            view.put(Arc::unwrap_or_clone(node("c", &[(&name, "cccc0000")])));
        }
        view.remove(&NodeId::new("c").unwrap());
        assert!(view.has_name("api") && !view.has_name("tmp-499"));
        assert!(view.read().names.count.len() < 200, "zeros are swept");
    }

    #[test]
    fn the_constraint_index_follows_every_way_a_node_changes() {
        use crate::fleet::expr::Expr;
        let view = TenantView::default();
        let zone = |id: &str, z: &str| {
            let mut n = Node::new(NodeId::new(id).unwrap());
            n.labels.insert("zone".into(), z.into());
            n
        };
        let in_zone = |z: &str| {
            let expr = [Expr::parse(&format!("zone=={z}")).unwrap()];
            view.with_nodes(|all, index| {
                let held = index.holding(all, &expr).unwrap();
                held.ones()
                    .map(|p| all[p].id.to_string())
                    .collect::<Vec<_>>()
            })
        };
        view.put(zone("b", "z1"));
        assert_eq!(in_zone("z1"), ["b"]);
        view.put(zone("a", "z1"));
        assert_eq!(in_zone("z1"), ["a", "b"], "a node put in");
        let a = NodeId::new("a").unwrap();
        view.update(&a, |n| {
            n.labels.insert("zone".into(), "z2".into());
        });
        assert_eq!(in_zone("z1"), ["b"], "a label changed in place");
        assert_eq!(in_zone("z2"), ["a"]);
        view.put(zone("b", "z2"));
        assert_eq!(in_zone("z2"), ["a", "b"], "a node replaced whole");
        view.put_unlisted(&NodeId::new("0").unwrap());
        assert_eq!(in_zone("z2"), ["a", "b"], "a node came before the others");
        view.remove(&a);
        assert_eq!(in_zone("z2"), ["b"], "a node gone");
    }

    #[test]
    fn a_container_is_found_as_docker_would_on_one_host() {
        let nodes = [
            node("a", &[("web", "aaaa1111"), ("db", "abab2222")]),
            node("b", &[("web", "bbbb3333"), ("cache", "aaab4444")]),
        ];
        let at = |n: &str, id: &str| Found::At(NodeId::new(n).unwrap(), id.into());
        assert_eq!(find(&nodes, "db"), at("a", "abab2222"));
        assert_eq!(find(&nodes, "/cache"), at("b", "aaab4444"));
        assert_eq!(find(&nodes, "b/web"), at("b", "bbbb3333"));
        assert_eq!(find(&nodes, "bbbb"), at("b", "bbbb3333"));
        assert_eq!(find(&nodes, "aaaa1111"), at("a", "aaaa1111"));
        assert!(matches!(find(&nodes, "web"), Found::Ambiguous(n) if n.len() == 2));
        assert!(matches!(find(&nodes, "aaa"), Found::Ambiguous(_)));
        assert_eq!(find(&nodes, "ghost"), Found::Missing);
        assert_eq!(find(&nodes, "c/web"), Found::Missing);
        assert_eq!(find(&nodes, ""), Found::Missing);
    }

    #[test]
    fn a_name_on_an_offline_node_and_a_live_one_means_the_live_one() {
        let mut old = (*node("old", &[("phoenix", "aaaa")])).clone();
        old.health = Health::Offline;
        let nodes = [Arc::new(old), node("new", &[("phoenix", "bbbb")])];
        assert_eq!(
            find(&nodes, "phoenix"),
            Found::At(NodeId::new("new").unwrap(), "bbbb".into())
        );
        let both_live = [node("a", &[("web", "aaaa")]), node("b", &[("web", "bbbb")])];
        assert!(matches!(find(&both_live, "web"), Found::Ambiguous(_)));
    }

    #[test]
    fn info_inspect_and_image_lists_become_facts() {
        let (facts, labels) = facts_from_info(&json!({
            "NCPU": 2, "MemTotal": 1024, "Driver": "vfs", "KernelVersion": "6.1",
            "OperatingSystem": "Debian", "Architecture": "x86_64",
            "Labels": ["region=eu", "gpu"],
        }));
        assert_eq!((facts.ncpu, facts.mem_total), (2, 1024));
        assert_eq!(facts.storage_driver, "vfs");
        assert_eq!(labels["region"], "eu");
        assert_eq!(labels["gpu"], "");
        let c = container_from_inspect(
            &json!({
                "Id": "abc", "Name": "/web", "Image": "sha256:1",
                "Config": {"Image": "busybox", "Labels": {"tier": "front"},
                           "ExposedPorts": {"80/tcp": {}}},
                "HostConfig": {"Memory": 64, "NanoCpus": 5, "NetworkMode": "host"},
                "State": {"Running": true, "Status": "running"},
            }),
            Some(json!({"Id": "abc"})),
        );
        assert_eq!((c.name.as_str(), c.image.as_str()), ("web", "busybox"));
        assert_eq!((c.memory, c.nano_cpus, c.running), (64, 5, true));
        assert_eq!(c.host_ports[0].to_string(), "80/tcp");
        assert_eq!(c.labels.get("tier"), Some("front"));
        assert_eq!(c.listing.as_deref(), Some("{\"Id\":\"abc\"}"));
        let images = images_from_list(&json!([
            {"Id": "sha256:1", "RepoTags": ["busybox:latest"]},
            {"Id": "sha256:2", "RepoTags": ["<none>:<none>"]},
        ]));
        assert_eq!(images[0].tags, ["busybox:latest"]);
        assert!(images[1].tags.is_empty());
    }

    #[test]
    fn exec_ids_are_remembered_and_the_oldest_forgotten() {
        let view = TenantView::default();
        let a = NodeId::new("a").unwrap();
        for i in 0..=MAX_EXECS {
            view.put_exec(format!("e{i}"), a.clone());
        }
        assert_eq!(view.exec_node("e0"), None);
        assert_eq!(view.exec_node(&format!("e{MAX_EXECS}")), Some(a));
    }
}
