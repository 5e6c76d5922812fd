//! What the fleet knows of each node: its facts, its containers and its
//! images, as the placement and the cached reads see them. Plain data:
//! filled by [`super::cache`], read by everything else; nothing here does
//! IO or knows where the data came from.

use std::collections::BTreeMap;

use tunnelgate_proto::NodeId;

/// One node of a tenant's fleet.
///
/// Laid out in the order written, the fields a placement reads at every
/// node first (health, policy, containers and their sums, CPUs and
/// memory), so that over 10,000 nodes each costs one or two cache lines
/// rather than a line per field scattered over its 500 bytes.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Node {
    /// Whether calls can reach its daemon now.
    pub health: Health,
    /// Whether the agent's policy lets calls change the node.
    pub writable: bool,
    /// What its containers reserve, summed as they change.
    reserved: Reserved,
    /// Its containers, stopped ones included; changed only through
    /// [`Node::put_container`] and [`Node::remove_container`], which keep
    /// `reserved` and `summary` true.
    containers: Vec<Container>,
    /// What `docker info` says of the host.
    pub facts: Facts,
    /// What else its containers add up to, so a placement reads one set
    /// per node rather than every container.
    summary: Summary,
    /// The node's id.
    pub id: NodeId,
    /// The host's name, as its agent reported it.
    pub hostname: String,
    /// The agent's `--label`s.
    pub labels: BTreeMap<String, String>,
    /// The daemon's own labels (`docker info`'s `Labels`, `key=value`).
    pub engine_labels: BTreeMap<String, String>,
    /// `quic` or `tcp` for a node held here, `peer` for one held elsewhere.
    pub transport: String,
    /// How a call reaches it from this relay: `direct`, `local` or `peer`.
    pub route: String,
    /// The relay holding its session.
    pub relay: String,
    /// Its images.
    pub images: Vec<Image>,
}

/// What a node's containers reserve, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Reserved {
    nano_cpus: u64,
    memory: u64,
}

/// Sets over a node's containers, kept as they change.
#[derive(Debug, Clone, Default)]
struct Summary {
    /// Host ports of running containers, with the container's name.
    live_ports: Vec<(HostPort, String)>,
    /// Every `key=value` label of its containers, lowercased.
    labels: std::collections::HashSet<String>,
}

/// `docker info` facts of a host that constraints may name; CPUs and
/// memory first ([`Node`]'s layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Facts {
    /// CPUs (`NCPU`).
    pub ncpu: u64,
    /// Memory in bytes (`MemTotal`).
    pub mem_total: u64,
    /// `Driver`.
    pub storage_driver: String,
    /// `KernelVersion`.
    pub kernel_version: String,
    /// `OperatingSystem`.
    pub operating_system: String,
    /// `Architecture`, as Docker names it (`x86_64`).
    pub architecture: String,
    /// `ServerVersion`.
    pub server_version: String,
}

/// Whether a node can take calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Connected, and its daemon answers.
    #[default]
    Healthy,
    /// Connected, but the agent cannot reach its daemon (why).
    DaemonDown(String),
    /// Its agent is not connected to any relay.
    Offline,
    /// Connected, but the relay has not finished its first listing of it.
    Unlisted,
}

impl Health {
    /// As `info` and the skipped-nodes header say it.
    pub fn describe(&self) -> String {
        match self {
            Self::Healthy => "online".to_owned(),
            Self::DaemonDown(why) => format!("daemon unreachable: {why}"),
            Self::Offline => "offline".to_owned(),
            Self::Unlisted => "connected a moment ago, not listed yet".to_owned(),
        }
    }
}

/// One container, as the placement needs it.
#[derive(Debug, Clone, Default)]
pub struct Container {
    /// The full id.
    pub id: String,
    /// Its name, without the leading `/`.
    pub name: String,
    /// The image it was created from, as asked (`busybox`, `busybox:1`).
    pub image: String,
    /// The image's id (`sha256:...`).
    pub image_id: String,
    /// Its labels.
    pub labels: Labels,
    /// CPUs it reserves, in billionths (`--cpus`; `--cpu-shares` / 1024).
    pub nano_cpus: u64,
    /// Memory it reserves, in bytes (`-m`).
    pub memory: u64,
    /// Host ports it binds.
    pub host_ports: Vec<HostPort>,
    /// Whether it is running (or paused, or restarting): holding its
    /// host ports.
    pub running: bool,
    /// Docker's word for its state (`created`, `running`, `exited`, ...).
    pub state: String,
    /// When it last started and last stopped, and its last exit code,
    /// for `ps`'s status line (`Up 3 minutes`, `Exited (0) 2 hours ago`).
    pub times: Option<Times>,
    /// Its entry of the daemon's `GET /containers/json`, as JSON text,
    /// for `ps` on the fleet.
    pub listing: Option<std::sync::Arc<str>>,
    /// For a container that asks to be rescheduled when its node fails:
    /// the create body that makes it again (its `Config` with its
    /// `HostConfig`), as JSON text.
    pub respawn: Option<std::sync::Arc<str>>,
}

/// A container's labels, as one sorted list: a container has few, they
/// are read rarely, and a `BTreeMap` spends about 500 bytes on its first
/// node, a quarter of what a container may cost the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// Whether label `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Every label, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Sets label `key` (a copy of the list: for building, not a hot path).
    pub fn insert(&mut self, key: String, value: String) {
        let mut all: Vec<(String, String)> = self
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        all.push((key, value));
        *self = all.into_iter().collect();
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(items: I) -> Self {
        let mut all: Vec<(Box<str>, Box<str>)> = items
            .into_iter()
            .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        // The last of a repeated key wins, as in a map.
        all.reverse();
        all.dedup_by(|a, b| a.0 == b.0);
        all.reverse();
        Self(all.into_boxed_slice())
    }
}

/// When a container last started and stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// `State.StartedAt`.
    pub started: std::time::SystemTime,
    /// `State.FinishedAt`.
    pub finished: std::time::SystemTime,
    /// `State.ExitCode`.
    pub exit_code: i64,
}

impl Container {
    /// `docker ps`'s status line for it at `now`, as Docker writes it.
    pub fn status_line(&self, now: std::time::SystemTime) -> Option<String> {
        let t = self.times?;
        let since = |at: std::time::SystemTime| human(now.duration_since(at).unwrap_or_default());
        Some(match self.state.as_str() {
            "running" => format!("Up {}", since(t.started)),
            "paused" => format!("Up {} (Paused)", since(t.started)),
            "restarting" => format!("Restarting ({}) {} ago", t.exit_code, since(t.finished)),
            "exited" => format!("Exited ({}) {} ago", t.exit_code, since(t.finished)),
            "created" => "Created".to_owned(),
            "dead" => "Dead".to_owned(),
            "removing" => "Removal In Progress".to_owned(),
            _ => return None,
        })
    }
}

/// A duration as Docker's status lines say it.
fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (mins, hours) = (secs / 60, (secs as f64 / 3600.0).round() as u64);
    match secs {
        0 => "Less than a second".to_owned(),
        1 => "1 second".to_owned(),
        s if s < 60 => format!("{s} seconds"),
        _ if mins == 1 => "About a minute".to_owned(),
        _ if mins < 60 => format!("{mins} minutes"),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 14 => format!("{} days", hours / 24),
        _ if hours < 24 * 60 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 730 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

/// A port on the host a container binds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// The host address, empty for all of them.
    pub ip: String,
    /// The port.
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
}

impl HostPort {
    /// Whether this binding and `other` cannot both be held on one host.
    pub fn clashes(&self, other: &HostPort) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.port == other.port
            && self.proto == other.proto
            && (any(&self.ip) || any(&other.ip) || self.ip == other.ip)
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip.is_empty() {
            true => write!(f, "{}/{}", self.port, self.proto),
            false => write!(f, "{}:{}/{}", self.ip, self.port, self.proto),
        }
    }
}

/// One image.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// `sha256:...`.
    pub id: String,
    /// `repo:tag` names.
    pub tags: Vec<String>,
    /// The node's `GET /images/json` item for it, as it came, so
    /// `docker images` on the fleet answers from the view.
    pub listing: Option<std::sync::Arc<str>>,
}

impl Image {
    /// Whether `name` (a name with or without tag, or an id or id prefix)
    /// names this image.
    pub fn is_named(&self, name: &str) -> bool {
        let bare_id = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        let asked_id = name.strip_prefix("sha256:").unwrap_or(name);
        if asked_id.len() >= 4 && bare_id.starts_with(asked_id) {
            return true;
        }
        let wanted = with_tag(name);
        self.tags.contains(&wanted)
    }
}

/// An image name with `:latest` when it names no tag or digest.
pub fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.contains(':') || name.contains('@') {
        true => name.to_owned(),
        false => format!("{name}:latest"),
    }
}

impl Node {
    /// A healthy, writable node with no facts, containers or images.
    pub fn new(id: NodeId) -> Self {
        Self {
            hostname: id.to_string(),
            id,
            labels: BTreeMap::new(),
            engine_labels: BTreeMap::new(),
            facts: Facts::default(),
            transport: String::new(),
            route: String::new(),
            relay: String::new(),
            health: Health::Healthy,
            writable: true,
            containers: Vec::new(),
            images: Vec::new(),
            reserved: Reserved::default(),
            summary: Summary::default(),
        }
    }

    /// Its containers, stopped ones included.
    pub fn containers(&self) -> &[Container] {
        &self.containers
    }

    /// Puts container `c` in, replacing the one with its id.
    pub fn put_container(&mut self, c: Container) {
        match self.containers.iter_mut().find(|old| old.id == c.id) {
            Some(old) => *old = c,
            None => self.containers.push(c),
        }
        self.recount();
    }

    /// Puts these containers in place of all it had.
    pub fn set_containers(&mut self, containers: Vec<Container>) {
        self.containers = containers;
        self.recount();
    }

    /// Removes the container with the full id `id`.
    pub fn remove_container(&mut self, id: &str) {
        self.containers.retain(|c| c.id != id);
        self.recount();
    }

    fn recount(&mut self) {
        let (mut reserved, mut sum) = (Reserved::default(), Summary::default());
        for c in &self.containers {
            reserved.nano_cpus += c.nano_cpus;
            reserved.memory += c.memory;
            if c.running {
                let ports = c.host_ports.iter().map(|p| (p.clone(), c.name.clone()));
                sum.live_ports.extend(ports);
            }
            for (k, v) in c.labels.iter() {
                sum.labels.insert(format!("{k}={v}").to_ascii_lowercase());
            }
        }
        (self.reserved, self.summary) = (reserved, sum);
    }

    /// The running container holding a host port that clashes with `want`.
    pub fn port_holder(&self, want: &HostPort) -> Option<&str> {
        self.summary
            .live_ports
            .iter()
            .find(|(p, _)| p.clashes(want))
            .map(|(_, name)| name.as_str())
    }

    /// Whether one of its containers has the label `key=value` written
    /// `lower_pair`, lowercased (labels match in any case).
    pub fn has_container_label(&self, lower_pair: &str) -> bool {
        self.summary.labels.contains(lower_pair)
    }

    /// CPUs its containers reserve, in billionths: stopped ones too, as
    /// Swarm counted them, since each may be started again.
    pub fn reserved_nano_cpus(&self) -> u64 {
        self.reserved.nano_cpus
    }

    /// Memory its containers reserve, in bytes, stopped ones too.
    pub fn reserved_memory(&self) -> u64 {
        self.reserved.memory
    }

    /// Its running containers.
    pub fn live(&self) -> impl Iterator<Item = &Container> {
        self.containers.iter().filter(|c| c.running)
    }

    /// The container named `name` (without `/`), or with id or a unique
    /// id prefix `name`.
    pub fn container(&self, name: &str) -> Option<&Container> {
        let name = name.trim_start_matches('/');
        if let Some(c) = self.containers.iter().find(|c| c.name == name) {
            return Some(c);
        }
        let mut by_id = self.containers.iter().filter(|c| c.id.starts_with(name));
        match (name.is_empty(), by_id.next(), by_id.next()) {
            (false, Some(c), None) => Some(c),
            _ => None,
        }
    }

    /// Whether it has an image that `name` names.
    pub fn has_image(&self, name: &str) -> bool {
        self.images.iter().any(|i| i.is_named(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_read_as_a_map_and_the_last_of_a_key_wins() {
        let mut l: Labels = [("b", "2"), ("a", "1"), ("b", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(l.get("a"), Some("1"));
        assert_eq!(l.get("b"), Some("3"));
        assert!(!l.contains_key("c"));
        l.insert("c".into(), "4".into());
        l.insert("a".into(), "5".into());
        let all: Vec<_> = l.iter().collect();
        assert_eq!(all, [("a", "5"), ("b", "3"), ("c", "4")]);
    }

    #[test]
    fn an_image_is_named_by_tag_with_or_without_latest_and_by_id_prefix() {
        let image = Image {
            id: "sha256:0123456789abcdef".into(),
            tags: vec!["busybox:latest".into(), "reg:5000/tools/sh:1.2".into()],
            ..Default::default()
        };
        for name in [
            "busybox",
            "busybox:latest",
            "reg:5000/tools/sh:1.2",
            "01234567",
            "sha256:0123",
        ] {
            assert!(image.is_named(name), "{name}");
        }
        for name in ["busybox:1", "reg:5000/tools/sh", "012", "alpine", "abcdef"] {
            assert!(!image.is_named(name), "{name}");
        }
    }

    #[test]
    fn a_container_is_found_by_name_or_a_unique_id_prefix() {
        let mut node = Node::new(NodeId::new("n").unwrap());
        for (id, name) in [("abc111", "web"), ("abc222", "db")] {
            node.put_container(Container {
                id: id.into(),
                name: name.into(),
                ..Default::default()
            });
        }
        assert_eq!(
            node.container("/web").map(|c| c.id.as_str()),
            Some("abc111")
        );
        assert_eq!(node.container("abc2").map(|c| c.name.as_str()), Some("db"));
        assert!(node.container("abc").is_none(), "an ambiguous prefix");
        assert!(node.container("").is_none());
    }

    #[test]
    fn a_status_line_reads_as_dockers_at_the_time_it_is_asked() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let mut c = Container {
            state: "running".into(),
            times: Some(Times {
                started: at(1000),
                finished: at(900),
                exit_code: 137,
            }),
            ..Default::default()
        };
        assert_eq!(c.status_line(at(1000)).unwrap(), "Up Less than a second");
        assert_eq!(c.status_line(at(1045)).unwrap(), "Up 45 seconds");
        assert_eq!(c.status_line(at(1000 + 180)).unwrap(), "Up 3 minutes");
        assert_eq!(c.status_line(at(1000 + 3 * 3600)).unwrap(), "Up 3 hours");
        c.state = "exited".into();
        assert_eq!(
            c.status_line(at(960)).unwrap(),
            "Exited (137) About a minute ago"
        );
        c.state = "created".into();
        assert_eq!(c.status_line(at(960)).unwrap(), "Created");
        c.times = None;
        assert_eq!(c.status_line(at(960)), None);
    }

    #[test]
    fn host_ports_clash_on_the_same_port_and_an_overlapping_address() {
        let p = |ip: &str, port, proto: &str| HostPort {
            ip: ip.into(),
            port,
            proto: proto.into(),
        };
        assert!(p("", 80, "tcp").clashes(&p("127.0.0.1", 80, "tcp")));
        assert!(p("10.0.0.1", 80, "tcp").clashes(&p("10.0.0.1", 80, "tcp")));
        assert!(!p("10.0.0.1", 80, "tcp").clashes(&p("10.0.0.2", 80, "tcp")));
        assert!(!p("", 80, "tcp").clashes(&p("", 80, "udp")));
        assert!(!p("", 80, "tcp").clashes(&p("", 81, "tcp")));
    }
}
