//! The filters a placement runs, in order, each keeping the nodes that can
//! run a container and saying why each other one cannot (Swarm's
//! `scheduler/filter`, one file per filter). A filter is pure: the ask and
//! the nodes in, a verdict out.

mod affinity;
mod constraint;
mod dependency;
mod health;
mod port;
pub mod resources;

pub use affinity::Affinity;
pub use constraint::Constraint;
pub(super) use constraint::Source;
pub use dependency::Dependency;
pub use health::Health;
pub use port::Port;
pub use resources::Resources;

use super::ask::Ask;
use super::expr::Expr;
use super::view::Node;

/// What one filter made of the nodes it was given.
#[derive(Debug, Default)]
pub struct Outcome<'v> {
    /// Whether reasons are written out: a placement asks for them only
    /// when no node is left, so ruling 10,000 nodes out formats nothing.
    pub explain: bool,
    /// The nodes that pass.
    pub kept: Vec<&'v Node>,
    /// The nodes that do not, each with why.
    pub ruled_out: Vec<(&'v Node, String)>,
    /// What else the placement should say (a soft filter dropped, ...).
    pub notes: Vec<String>,
}

impl<'v> Outcome<'v> {
    /// An empty outcome that writes reasons out if `explain`.
    pub fn new(explain: bool) -> Self {
        Self {
            explain,
            ..Self::default()
        }
    }

    /// Rules `node` out, for the reason `why` gives (asked only when the
    /// outcome explains).
    pub fn rule_out(&mut self, node: &'v Node, why: impl FnOnce() -> String) {
        let why = match self.explain {
            true => why(),
            false => String::new(),
        };
        self.ruled_out.push((node, why));
    }
}

/// A test of one node: whether it passes.
pub type NodeTest<'a> = Box<dyn Fn(&Node) -> bool + 'a>;

/// One of the placement's filters.
pub trait Filter: Sync {
    /// Its name in messages (`constraint`, `port`, ...).
    fn name(&self) -> &'static str;

    /// The filter as tests of one node each, all of which a node must
    /// pass (none: every node passes), when it is no more than that for
    /// `ask`: a placement then runs every filter in one pass over the
    /// nodes, touching each node's memory once, which over 10,000 nodes
    /// was most of its time. `None` when the verdict on a node depends
    /// on the other nodes (a soft expression, a dependency), so the
    /// filter must run on its own.
    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>>;

    /// Keeps the `nodes` that can run `ask`; `fleet` is every node of the
    /// tenant, for filters that look at where other containers are. The
    /// reasons for the nodes it rules out are written only if `explain`.
    fn filter<'v>(
        &self,
        ask: &Ask,
        fleet: &[&'v Node],
        nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v>;
}

/// Every filter, in the order a placement runs them.
pub fn all() -> [&'static dyn Filter; 6] {
    [
        &Health,
        &Constraint,
        &Affinity,
        &Dependency,
        &Port,
        &Resources,
    ]
}

/// Keeps the nodes for which every hard expression holds, then applies
/// each soft one that leaves at least one node, and notes the others.
/// `test` makes, once per expression, the check of one node (so what an
/// expression's key means is worked out once, not at each of 10,000
/// nodes), and `why` gives the reason a node fails one.
pub(super) fn by_expressions<'v, 'e, T: Fn(&Node) -> bool>(
    what: &str,
    exprs: &'e [Expr],
    nodes: Vec<&'v Node>,
    explain: bool,
    test: impl Fn(&'e Expr) -> T,
    why: impl Fn(&Expr, &Node) -> String,
) -> Outcome<'v> {
    let mut out = Outcome::new(explain);
    let mut kept = nodes;
    for expr in exprs.iter().filter(|e| !e.soft) {
        let holds = test(expr);
        let (pass, fail): (Vec<_>, Vec<_>) = kept.into_iter().partition(|n| holds(n));
        for n in fail {
            out.rule_out(n, || why(expr, n));
        }
        kept = pass;
    }
    for expr in exprs.iter().filter(|e| e.soft) {
        let holds = test(expr);
        let (pass, fail): (Vec<_>, Vec<_>) = kept.iter().partition(|n| holds(n));
        if pass.is_empty() {
            out.notes.push(format!(
                "the soft {what} {expr} matched none of the {} node(s) left, so it was ignored",
                kept.len()
            ));
            continue;
        }
        for n in fail {
            out.rule_out(n, || why(expr, n));
        }
        kept = pass;
    }
    out.kept = kept;
    out
}

/// [`Filter::tests`] for a filter of expressions: one test per hard
/// expression, made by `test`; `None` if any is soft, since a soft one
/// is dropped when it matches none of the nodes left.
pub(super) fn expression_tests<'a, T: Fn(&Node) -> bool + 'a>(
    exprs: &'a [Expr],
    test: impl Fn(&'a Expr) -> T,
) -> Option<Vec<NodeTest<'a>>> {
    if exprs.iter().any(|e| e.soft) {
        return None;
    }
    Some(
        exprs
            .iter()
            .map(|e| Box::new(test(e)) as NodeTest<'a>)
            .collect(),
    )
}

#[cfg(test)]
pub(super) mod fake {
    //! A made-up fleet for the filters' and strategies' tests.
    use tunnelgate_proto::NodeId;

    use crate::fleet::view::{Container, Node};

    /// A healthy node with 4 CPUs and 4 GiB.
    pub fn node(id: &str) -> Node {
        let mut n = Node::new(NodeId::new(id).expect("a valid test node id"));
        n.facts.ncpu = 4;
        n.facts.mem_total = 4 << 30;
        n
    }

    /// A running container.
    pub fn container(name: &str, id: &str) -> Container {
        Container {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            running: true,
            ..Default::default()
        }
    }

    /// The ids of nodes, in order.
    pub fn ids(nodes: &[&Node]) -> Vec<String> {
        nodes.iter().map(|n| n.id.to_string()).collect()
    }
}
