//! What a `POST /containers/create` asks of the fleet: its filters, the
//! CPU and memory it reserves, the host ports it takes, the containers it
//! must sit beside. Read from the Docker create body as Swarm read it:
//! `constraint:…`, `affinity:…` and `reschedule:…` in `Env`, or the
//! labels `com.docker.swarm.constraints` / `.affinities` /
//! `.reschedule-policies` (JSON lists, as compose files written for Swarm
//! carry them). The body the chosen node gets has those `Env` entries
//! moved into the labels, so a later reschedule reads them back.

use serde_json::{Map, Value};

use super::expr::{Expr, ExprError};
use super::view::HostPort;

/// The label that carries a container's constraints.
pub const CONSTRAINTS_LABEL: &str = "com.docker.swarm.constraints";
/// The label that carries a container's affinities.
pub const AFFINITIES_LABEL: &str = "com.docker.swarm.affinities";
/// The label that carries a container's reschedule policies.
pub const RESCHEDULE_LABEL: &str = "com.docker.swarm.reschedule-policies";

/// A container another must sit beside, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// `--volumes-from`, `--link` or `--net container:`.
    pub kind: &'static str,
    /// The container, as named (maybe `node/name`).
    pub container: String,
}

/// What one create asks of the fleet.
#[derive(Debug, Clone, Default)]
pub struct Ask {
    /// The name asked for (`--name`), if any.
    pub name: Option<String>,
    /// The image.
    pub image: String,
    /// Constraints on the node.
    pub constraints: Vec<Expr>,
    /// Affinities to containers, images and labels.
    pub affinities: Vec<Expr>,
    /// CPUs reserved, in billionths.
    pub nano_cpus: u64,
    /// Memory reserved, in bytes.
    pub memory: u64,
    /// Host ports it binds.
    pub host_ports: Vec<HostPort>,
    /// Containers it must sit beside.
    pub dependencies: Vec<Dependency>,
    /// Whether it asks to be created again elsewhere when its node fails.
    pub reschedule: bool,
}

/// Why a create body cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The body is not a JSON object.
    #[error("the create request's body is not a JSON object")]
    NotAnObject,
    /// A filter expression does not parse.
    #[error("{0}")]
    Expr(#[from] ExprError),
    /// A Swarm label that is not a JSON list of strings.
    #[error("the label {0} must be a JSON list of strings, such as [\"region==eu\"]")]
    BadLabel(&'static str),
    /// A reschedule policy other than the one there is.
    #[error("unknown reschedule policy {0:?}: the one there is is on-node-failure")]
    BadReschedule(String),
}

impl Ask {
    /// Reads a create body, and moves its Swarm `Env` entries into labels.
    pub fn from_create(name: Option<&str>, body: &mut Value) -> Result<Self, AskError> {
        let obj = body.as_object_mut().ok_or(AskError::NotAnObject)?;
        let mut constraints = label_list(obj, CONSTRAINTS_LABEL)?;
        let mut affinities = label_list(obj, AFFINITIES_LABEL)?;
        let mut policies = label_list(obj, RESCHEDULE_LABEL)?;
        if let Some(Value::Array(env)) = obj.get_mut("Env") {
            env.retain(|e| {
                let Some(text) = e.as_str() else {
                    return true;
                };
                let (list, rest) = if let Some(r) = text.strip_prefix("constraint:") {
                    (&mut constraints, r)
                } else if let Some(r) = text.strip_prefix("affinity:") {
                    (&mut affinities, r)
                } else if let Some(r) = text.strip_prefix("reschedule:") {
                    (&mut policies, r)
                } else {
                    return true;
                };
                list.push(rest.to_owned());
                false
            });
        }
        for policy in &policies {
            if policy != "on-node-failure" && policy != "off" {
                return Err(AskError::BadReschedule(policy.clone()));
            }
        }
        let parse = |list: &[String]| -> Result<Vec<Expr>, ExprError> {
            list.iter().map(|t| Expr::parse(t)).collect()
        };
        let ask = Self {
            name: name.filter(|n| !n.is_empty()).map(str::to_owned),
            image: str_at(obj.get("Image")).to_owned(),
            constraints: parse(&constraints)?,
            affinities: parse(&affinities)?,
            nano_cpus: nano_cpus(obj.get("HostConfig")),
            memory: u64_at(obj.get("HostConfig").and_then(|h| h.get("Memory"))),
            host_ports: host_ports(obj.get("HostConfig"), obj.get("ExposedPorts")),
            dependencies: dependencies(obj.get("HostConfig")),
            reschedule: policies.iter().any(|p| p == "on-node-failure"),
        };
        set_label(obj, CONSTRAINTS_LABEL, &constraints);
        set_label(obj, AFFINITIES_LABEL, &affinities);
        set_label(obj, RESCHEDULE_LABEL, &policies);
        Ok(ask)
    }
}

fn str_at(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

fn u64_at(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// The CPUs a `HostConfig` reserves, in billionths: `NanoCpus` (`--cpus`),
/// else `CpuShares` as a share of one CPU (1024 is one).
pub fn nano_cpus(host_config: Option<&Value>) -> u64 {
    let nano = u64_at(host_config.and_then(|h| h.get("NanoCpus")));
    match nano {
        0 => u64_at(host_config.and_then(|h| h.get("CpuShares"))) * 1_000_000_000 / 1024,
        n => n,
    }
}

/// The host ports a container binds: its `PortBindings` with a host port,
/// and with host networking every exposed port.
pub fn host_ports(host_config: Option<&Value>, exposed: Option<&Value>) -> Vec<HostPort> {
    let split = |spec: &str| -> Option<(u16, String)> {
        let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        Some((port.parse().ok()?, proto.to_owned()))
    };
    let mut ports = Vec::new();
    if let Some(Value::Object(bindings)) = host_config.and_then(|h| h.get("PortBindings")) {
        for (spec, list) in bindings {
            let Some((_, proto)) = split(spec) else {
                continue;
            };
            for binding in list.as_array().into_iter().flatten() {
                let Ok(port) = str_at(binding.get("HostPort")).parse::<u16>() else {
                    continue;
                };
                ports.push(HostPort {
                    ip: str_at(binding.get("HostIp")).to_owned(),
                    port,
                    proto: proto.clone(),
                });
            }
        }
    }
    let host_net = str_at(host_config.and_then(|h| h.get("NetworkMode"))) == "host";
    if let (true, Some(Value::Object(exposed))) = (host_net, exposed) {
        for spec in exposed.keys() {
            if let Some((port, proto)) = split(spec) {
                ports.push(HostPort {
                    ip: String::new(),
                    port,
                    proto,
                });
            }
        }
    }
    ports.sort();
    ports.dedup();
    ports
}

/// The containers a `HostConfig` needs on the same node.
fn dependencies(host_config: Option<&Value>) -> Vec<Dependency> {
    let Some(hc) = host_config else {
        return Vec::new();
    };
    let strings = |key: &str| -> Vec<String> {
        hc.get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let mut deps = Vec::new();
    for v in strings("VolumesFrom") {
        let name = v.split(':').next().unwrap_or_default();
        deps.push(Dependency {
            kind: "--volumes-from",
            container: name.to_owned(),
        });
    }
    for link in strings("Links") {
        // `name:alias`, or `/name:/me/alias` as the daemon stores it.
        let name = link.split(':').next().unwrap_or_default();
        deps.push(Dependency {
            kind: "--link",
            container: name.trim_start_matches('/').to_owned(),
        });
    }
    if let Some(name) = str_at(hc.get("NetworkMode")).strip_prefix("container:") {
        deps.push(Dependency {
            kind: "--net container:",
            container: name.to_owned(),
        });
    }
    deps.retain(|d| !d.container.is_empty());
    deps
}

/// A Swarm label's list; an absent label is an empty list.
fn label_list(obj: &Map<String, Value>, label: &'static str) -> Result<Vec<String>, AskError> {
    let Some(text) = obj.get("Labels").and_then(|l| l.get(label)) else {
        return Ok(Vec::new());
    };
    let text = text.as_str().ok_or(AskError::BadLabel(label))?;
    serde_json::from_str::<Vec<String>>(text).map_err(|_| AskError::BadLabel(label))
}

fn set_label(obj: &mut Map<String, Value>, label: &str, list: &[String]) {
    if list.is_empty() {
        return;
    }
    let labels = obj
        .entry("Labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(Map::new());
    }
    if let Some(labels) = labels.as_object_mut() {
        let text = serde_json::to_string(list).expect("a list of strings always serialises");
        labels.insert(label.to_owned(), Value::String(text));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn env_filters_move_into_labels_and_are_read_with_the_labels_own() {
        let mut body = json!({
            "Image": "busybox",
            "Env": ["A=1", "constraint:region==eu", "affinity:image==busybox",
                    "reschedule:on-node-failure"],
            "Labels": {CONSTRAINTS_LABEL: "[\"disk==ssd\"]"},
        });
        let ask = Ask::from_create(Some("web"), &mut body).unwrap();
        let texts: Vec<_> = ask.constraints.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["disk==ssd", "region==eu"]);
        assert_eq!(ask.affinities[0].text, "image==busybox");
        assert!(ask.reschedule);
        assert_eq!(ask.name.as_deref(), Some("web"));
        assert_eq!(body["Env"], json!(["A=1"]));
        assert_eq!(
            body["Labels"][CONSTRAINTS_LABEL],
            "[\"disk==ssd\",\"region==eu\"]"
        );
        assert_eq!(body["Labels"][RESCHEDULE_LABEL], "[\"on-node-failure\"]");
        let again = Ask::from_create(None, &mut body).unwrap();
        assert_eq!(again.constraints.len(), 2, "read back from the labels");
        assert!(again.reschedule);
    }

    #[test]
    fn reservations_ports_and_dependencies_come_from_the_host_config() {
        let mut body = json!({
            "Image": "busybox",
            "ExposedPorts": {"9000/udp": {}},
            "HostConfig": {
                "Memory": 64 << 20, "CpuShares": 512,
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"},
                                            {"HostIp": "", "HostPort": ""}]},
                "VolumesFrom": ["data:ro"], "Links": ["/db:/web/db"],
                "NetworkMode": "container:net",
            },
        });
        let ask = Ask::from_create(None, &mut body).unwrap();
        assert_eq!(ask.memory, 64 << 20);
        assert_eq!(ask.nano_cpus, 500_000_000);
        let ports: Vec<_> = ask.host_ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["8080/tcp"], "a random host port takes nothing");
        let deps: Vec<_> = ask
            .dependencies
            .iter()
            .map(|d| (d.kind, d.container.as_str()))
            .collect();
        assert_eq!(
            deps,
            [
                ("--volumes-from", "data"),
                ("--link", "db"),
                ("--net container:", "net")
            ]
        );
        let mut host = json!({"ExposedPorts": {"9000/udp": {}},
                              "HostConfig": {"NetworkMode": "host", "NanoCpus": 1_500_000_000u64}});
        let ask = Ask::from_create(None, &mut host).unwrap();
        assert_eq!(ask.host_ports[0].to_string(), "9000/udp");
        assert_eq!(ask.nano_cpus, 1_500_000_000);
    }

    #[test]
    fn malformed_filters_and_policies_are_refused_naming_the_fix() {
        let mut bad = json!({"Env": ["constraint:region=eu"]});
        let e = Ask::from_create(None, &mut bad).unwrap_err();
        assert!(e.to_string().contains("key==value"), "{e}");
        let mut bad = json!({"Labels": {AFFINITIES_LABEL: "image==x"}});
        let e = Ask::from_create(None, &mut bad).unwrap_err();
        assert_eq!(e, AskError::BadLabel(AFFINITIES_LABEL));
        let mut bad = json!({"Env": ["reschedule:always"]});
        let e = Ask::from_create(None, &mut bad).unwrap_err();
        assert!(e.to_string().contains("on-node-failure"), "{e}");
        assert_eq!(
            Ask::from_create(None, &mut json!([])).unwrap_err(),
            AskError::NotAnObject
        );
    }
}
