//! Constraints on the node itself: `node` (its id or hostname), the
//! agent's `--label`s and the daemon's own labels, the `docker info`
//! facts `storagedriver`, `kernelversion`, `operatingsystem` and
//! `architecture`, and the relay's own `transport`, `route` and `relay`.

use super::{by_expressions, expression_tests, Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::expr::Expr;
use crate::fleet::view::Node;

/// The constraint filter.
#[derive(Debug)]
pub struct Constraint;

/// Where a constraint's key is read on a node: worked out once per
/// expression, since comparing the key with every fact's name at each
/// of 10,000 nodes was most of a filtered placement's time.
#[derive(Debug, Clone, Copy)]
pub(in crate::fleet) enum Source<'k> {
    /// `node`: its id or its hostname.
    Node,
    /// One of the `docker info` facts or the relay's own.
    Fact(fn(&Node) -> &str),
    /// An agent label and a daemon label of this key both count.
    Label(&'k str),
}

impl<'k> Source<'k> {
    /// Where `key` is read.
    pub(in crate::fleet) fn of(key: &'k str) -> Self {
        match key {
            "node" => Self::Node,
            "storagedriver" => Self::Fact(|n| &n.facts.storage_driver),
            "kernelversion" => Self::Fact(|n| &n.facts.kernel_version),
            "operatingsystem" => Self::Fact(|n| &n.facts.operating_system),
            "architecture" => Self::Fact(|n| &n.facts.architecture),
            "transport" => Self::Fact(|n| &n.transport),
            "route" => Self::Fact(|n| &n.route),
            "relay" => Self::Fact(|n| &n.relay),
            label => Self::Label(label),
        }
    }

    /// A node's values for the key: none when it has no such fact or label.
    pub(in crate::fleet) fn values<'n>(self, node: &'n Node) -> impl Iterator<Item = &'n str> {
        let (a, b): (Option<&'n str>, Option<&'n str>) = match self {
            Self::Node => (Some(node.id.as_str()), Some(node.hostname.as_str())),
            Self::Fact(read) => (Some(read(node)), None),
            Self::Label(key) => (
                node.labels.get(key).map(String::as_str),
                node.engine_labels.get(key).map(String::as_str),
            ),
        };
        a.into_iter().chain(b)
    }
}

/// Whether a node holds to `expr`, its key worked out once.
fn holds(expr: &Expr) -> impl Fn(&Node) -> bool + '_ {
    let source = Source::of(&expr.key);
    move |n: &Node| expr.holds(source.values(n))
}

fn why(expr: &Expr, node: &Node) -> String {
    let have: Vec<&str> = Source::of(&expr.key).values(node).collect();
    match have.as_slice() {
        [] => format!("it has no label {} (wanted {expr})", expr.key),
        [one] => format!("its {} is {one:?} (wanted {expr})", expr.key),
        many => format!("its {} is {} (wanted {expr})", expr.key, many.join(" / ")),
    }
}

impl Filter for Constraint {
    fn name(&self) -> &'static str {
        "constraint"
    }

    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        expression_tests(&ask.constraints, holds)
    }

    fn filter<'v>(
        &self,
        ask: &Ask,
        _: &[&'v Node],
        nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v> {
        by_expressions("constraint", &ask.constraints, nodes, explain, holds, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{ids, node};

    fn ask(exprs: &[&str]) -> Ask {
        Ask {
            constraints: exprs.iter().map(|t| Expr::parse(t).unwrap()).collect(),
            ..Ask::default()
        }
    }

    fn run<'v>(exprs: &[&str], all: &[&'v Node]) -> Outcome<'v> {
        Constraint.filter(&ask(exprs), all, all.to_vec(), true)
    }

    #[test]
    fn agent_labels_daemon_labels_facts_and_the_node_itself_are_matched() {
        let mut a = node("a");
        a.labels.insert("region".into(), "eu".into());
        a.facts.storage_driver = "vfs".into();
        a.hostname = "host-a".into();
        let mut b = node("b");
        b.engine_labels.insert("region".into(), "us".into());
        b.facts.storage_driver = "overlay2".into();
        b.transport = "tcp".into();
        let all = [&a, &b];
        assert_eq!(ids(&run(&["region==eu"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["region==us"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["region!=eu"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["storagedriver==/over.*/"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["node==host-a"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["node!=b"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["transport==tcp"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["node==*"], &all).kept), ["a", "b"]);
    }

    #[test]
    fn a_soft_constraint_that_matches_nothing_is_ignored_and_said() {
        let mut a = node("a");
        a.labels.insert("disk".into(), "ssd".into());
        let b = node("b");
        let all = [&a, &b];
        let soft = run(&["disk==~nvme"], &all);
        assert_eq!(ids(&soft.kept), ["a", "b"]);
        assert!(soft.notes[0].contains("disk==~nvme"), "{:?}", soft.notes);
        let soft = run(&["disk==~ssd"], &all);
        assert_eq!(
            ids(&soft.kept),
            ["a"],
            "a soft constraint that matches holds"
        );
        let hard = run(&["disk==nvme"], &all);
        assert!(hard.kept.is_empty());
        assert_eq!(
            hard.ruled_out[0].1,
            "its disk is \"ssd\" (wanted disk==nvme)"
        );
        assert_eq!(
            hard.ruled_out[1].1,
            "it has no label disk (wanted disk==nvme)"
        );
    }
}
