//! Containers that must share a node: `--volumes-from`, `--link` and
//! `--net container:X` keep only the node that holds every one of them.
//! Dependencies on different nodes, or on a container the fleet does not
//! have, rule out every node, saying which.

use super::{Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The dependency filter.
#[derive(Debug)]
pub struct Dependency;

/// The nodes of `fleet` holding the container `name` (`node/name` names
/// the node too).
fn holders<'v>(fleet: &[&'v Node], name: &str) -> Vec<&'v Node> {
    if let Some((node, bare)) = name.split_once('/') {
        return fleet
            .iter()
            .copied()
            .filter(|n| n.id.as_str() == node && n.container(bare).is_some())
            .collect();
    }
    fleet
        .iter()
        .copied()
        .filter(|n| n.container(name).is_some())
        .collect()
}

impl Filter for Dependency {
    fn name(&self) -> &'static str {
        "dependency"
    }

    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        // Where the dependencies are is a question about the whole fleet.
        ask.dependencies.is_empty().then(Vec::new)
    }

    fn filter<'v>(
        &self,
        ask: &Ask,
        fleet: &[&'v Node],
        nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v> {
        let mut out = Outcome::new(explain);
        if ask.dependencies.is_empty() {
            out.kept = nodes;
            return out;
        }
        // Where each dependency is; one that is nowhere, or on two nodes
        // by an ambiguous name, is reported as it is for every node.
        let mut wanted: Option<(&Node, String)> = None;
        let mut problem = None;
        for dep in &ask.dependencies {
            let at = holders(fleet, &dep.container);
            let what = format!("{} {}", dep.kind, dep.container);
            match (at.as_slice(), &wanted) {
                ([], _) => {
                    problem = Some(format!("{what}: no node has a container {}", dep.container));
                    break;
                }
                ([_, _, ..], _) => {
                    problem = Some(format!(
                        "{what}: {} nodes have a container {}; name it node/name",
                        at.len(),
                        dep.container
                    ));
                    break;
                }
                ([one], Some((node, first))) if one.id != node.id => {
                    problem = Some(format!(
                        "{first} is on node {} but {what} is on node {}: no node has both",
                        node.id, one.id
                    ));
                    break;
                }
                ([one], None) => wanted = Some((one, what)),
                ([_], Some(_)) => {}
            }
        }
        for node in nodes {
            let why = match (&problem, &wanted) {
                (Some(p), _) => p.clone(),
                (None, Some((at, what))) if at.id != node.id => {
                    format!("{what} is on node {}", at.id)
                }
                _ => {
                    out.kept.push(node);
                    continue;
                }
            };
            out.rule_out(node, || why);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ask::Dependency as Dep;
    use crate::fleet::filter::fake::{container, ids, node};

    fn ask(deps: &[(&'static str, &str)]) -> Ask {
        Ask {
            dependencies: deps
                .iter()
                .map(|(kind, c)| Dep {
                    kind,
                    container: (*c).to_owned(),
                })
                .collect(),
            ..Ask::default()
        }
    }

    #[test]
    fn dependencies_pull_to_their_node_and_contradictions_rule_out_all() {
        let mut a = node("a");
        a.put_container(container("data", "aaa1"));
        let mut b = node("b");
        b.put_container(container("db", "bbb1"));
        b.put_container(container("net", "bbb2"));
        let mut c = node("c");
        c.put_container(container("db", "ccc1"));
        let all = [&a, &b, &c];
        let run = |deps| Dependency.filter(&ask(deps), &all, all.to_vec(), true);
        assert_eq!(ids(&run(&[("--volumes-from", "data")]).kept), ["a"]);
        assert_eq!(
            ids(&run(&[("--link", "b/db"), ("--net container:", "net")]).kept),
            ["b"]
        );
        let contradiction = run(&[("--volumes-from", "data"), ("--net container:", "net")]);
        assert!(contradiction.kept.is_empty());
        assert_eq!(
            contradiction.ruled_out[0].1,
            "--volumes-from data is on node a but --net container: net is on node b: no node has both"
        );
        let missing = run(&[("--link", "ghost")]);
        assert!(missing.kept.is_empty());
        assert!(missing.ruled_out[0]
            .1
            .contains("no node has a container ghost"));
        let ambiguous = run(&[("--link", "db")]);
        assert!(ambiguous.ruled_out[0].1.contains("name it node/name"));
        assert_eq!(ids(&run(&[]).kept), ["a", "b", "c"]);
    }
}
