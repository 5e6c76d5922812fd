//! The part of `docker ps`'s query the fleet's view answers itself: `all`,
//! and the filters `label`, `name`, `id` and `status`. Anything else
//! (`limit`, `size`, `before`, other filters) is not understood here, and
//! the call goes to each node as before.

use std::collections::BTreeMap;

use serde_json::Value;

use super::super::routes::query_pairs;
use crate::fleet::view::{Container, Node};

/// What a `ps` query keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PsQuery {
    all: bool,
    /// `key` or `key=value`, every one must hold.
    labels: Vec<String>,
    /// The `key=value` ones lowercased, as nodes keep their containers'.
    pairs_lower: Vec<String>,
    /// Parts of a name, any one may match.
    names: Vec<String>,
    /// Id prefixes, any one may match.
    ids: Vec<String>,
    /// States, any one may match.
    statuses: Vec<String>,
}

/// `%XX` and `+` undone.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl PsQuery {
    /// The query, if the view can answer it.
    pub(super) fn parse(query: Option<&str>) -> Option<Self> {
        let mut q = Self::default();
        for (key, value) in query_pairs(query) {
            match key {
                "all" => q.all = value == "1" || value == "true",
                "filters" => q.add_filters(&decode(value)?)?,
                _ => return None,
            }
        }
        Some(q)
    }

    /// Docker's filter JSON: `{"label": {"a=b": true}}`, or the older
    /// `{"label": ["a=b"]}`.
    fn add_filters(&mut self, json: &str) -> Option<()> {
        let filters: BTreeMap<String, Value> = serde_json::from_str(json).ok()?;
        for (key, values) in filters {
            let values: Vec<String> = match values {
                Value::Object(map) => map.keys().cloned().collect(),
                Value::Array(list) => list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => return None,
            };
            match key.as_str() {
                "label" => {
                    let pairs = values.iter().filter(|v| v.contains('='));
                    self.pairs_lower
                        .extend(pairs.map(|v| v.to_ascii_lowercase()));
                    self.labels.extend(values);
                }
                "name" => self.names.extend(values),
                "id" => self.ids.extend(values),
                "status" => self.statuses.extend(values),
                _ => return None,
            }
        }
        Some(())
    }

    /// Whether any container of `node` may be in the answer: not when
    /// none has a `key=value` label asked for (the node keeps its
    /// containers' labels as one set, so a label filter over a large
    /// fleet looks at the containers of only the nodes that have it).
    pub(super) fn may_match(&self, node: &Node) -> bool {
        self.pairs_lower
            .iter()
            .all(|pair| node.has_container_label(pair))
    }

    /// Whether `c` is in the answer.
    pub(super) fn matches(&self, c: &Container) -> bool {
        // A status filter lists stopped containers without `all`, as
        // Docker does.
        if !self.all && self.statuses.is_empty() && !c.running {
            return false;
        }
        let label = |want: &String| match want.split_once('=') {
            Some((k, v)) => c.labels.get(k) == Some(v),
            None => c.labels.contains_key(want),
        };
        let any =
            |list: &[String], f: &dyn Fn(&String) -> bool| list.is_empty() || list.iter().any(f);
        self.labels.iter().all(label)
            && any(&self.names, &|n| c.name.contains(n.trim_start_matches('/')))
            && any(&self.ids, &|i| c.id.starts_with(i.as_str()))
            && any(&self.statuses, &|s| *s == c.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, running: bool, labels: &[(&str, &str)]) -> Container {
        Container {
            id: format!("id-{name}"),
            name: name.into(),
            running,
            state: if running { "running" } else { "exited" }.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_clis_filters_are_read_and_applied_as_docker_does() {
        let web = container("web", true, &[("tier", "front")]);
        let old = container("old-web", false, &[("tier", "front")]);
        let db = container("db", true, &[("tier", "back")]);
        let q = |s: &str| PsQuery::parse(Some(s)).unwrap();
        let hits = |q: &PsQuery| -> Vec<String> {
            [&web, &old, &db]
                .iter()
                .filter(|c| q.matches(c))
                .map(|c| c.name.clone())
                .collect()
        };
        assert_eq!(hits(&q("")), ["web", "db"]);
        assert_eq!(hits(&q("all=1")), ["web", "old-web", "db"]);
        let front = q("all=1&filters=%7B%22label%22%3A%7B%22tier%3Dfront%22%3Atrue%7D%7D");
        assert_eq!(hits(&front), ["web", "old-web"]);
        assert_eq!(
            hits(&q("filters=%7B%22label%22%3A%5B%22tier%22%5D%7D")),
            ["web", "db"]
        );
        assert_eq!(
            hits(&q("filters=%7B%22name%22%3A%7B%22web%22%3Atrue%7D%7D")),
            ["web"]
        );
        assert_eq!(
            hits(&q("filters=%7B%22status%22%3A%7B%22exited%22%3Atrue%7D%7D")),
            ["old-web"]
        );
        assert_eq!(
            hits(&q("filters=%7B%22id%22%3A%7B%22id-d%22%3Atrue%7D%7D")),
            ["db"]
        );
    }

    #[test]
    fn a_node_without_the_label_is_passed_over_whole() {
        let mut a = Node::new(tunnelgate_proto::NodeId::new("a").unwrap());
        a.put_container(container("web", false, &[("Tier", "Front")]));
        let mut b = Node::new(tunnelgate_proto::NodeId::new("b").unwrap());
        b.put_container(container("db", true, &[("tier", "back")]));
        let q = |s: &str| PsQuery::parse(Some(s)).unwrap();
        let front = q("filters=%7B%22label%22%3A%5B%22Tier%3DFront%22%5D%7D");
        assert!(front.may_match(&a), "a stopped container counts too");
        assert!(!front.may_match(&b));
        let key_only = q("filters=%7B%22label%22%3A%5B%22tier%22%5D%7D");
        assert!(key_only.may_match(&a) && key_only.may_match(&b));
        assert!(q("").may_match(&b));
    }

    #[test]
    fn what_the_view_cannot_answer_is_left_to_the_nodes() {
        assert_eq!(PsQuery::parse(Some("limit=3")), None);
        assert_eq!(
            PsQuery::parse(Some("filters=%7B%22ancestor%22%3A%5B%22x%22%5D%7D")),
            None
        );
        assert_eq!(PsQuery::parse(Some("filters=%ZZ")), None);
    }
}
