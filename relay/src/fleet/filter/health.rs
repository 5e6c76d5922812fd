//! Only nodes that can take the container: connected, their daemon
//! answering, and their agent's policy letting calls change the node.

use super::{Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::view::{self, Node};

/// The health filter.
#[derive(Debug)]
pub struct Health;

impl Filter for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn tests<'a>(&self, _: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        Some(vec![Box::new(|n: &Node| {
            n.writable && n.health == view::Health::Healthy
        })])
    }

    fn filter<'v>(
        &self,
        _: &Ask,
        _: &[&'v Node],
        mut nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v> {
        let mut out = Outcome::new(explain);
        // In place: a healthy fleet keeps its list, with no copy of it.
        nodes.retain(|&node| {
            let why = match (&node.health, node.writable) {
                (view::Health::Offline, _) => "its agent is not connected".to_owned(),
                (view::Health::Unlisted, _) => {
                    "it connected a moment ago and the relay is still listing it; try again in a moment"
                        .to_owned()
                }
                (view::Health::DaemonDown(e), _) => {
                    format!("its Docker daemon is unreachable ({e})")
                }
                (view::Health::Healthy, false) => {
                    "its agent's policy refuses calls that change the node".to_owned()
                }
                (view::Health::Healthy, true) => return true,
            };
            out.rule_out(node, || why);
            false
        });
        out.kept = nodes;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{ids, node};

    #[test]
    fn offline_unreachable_and_read_only_nodes_are_ruled_out_saying_which() {
        let ok = node("ok");
        let mut off = node("off");
        off.health = view::Health::Offline;
        let mut down = node("down");
        down.health = view::Health::DaemonDown("connection refused".into());
        let mut ro = node("ro");
        ro.writable = false;
        let mut new = node("new");
        new.health = view::Health::Unlisted;
        let all = [&ok, &off, &down, &ro, &new];
        let out = Health.filter(&Ask::default(), &all, all.to_vec(), true);
        assert_eq!(ids(&out.kept), ["ok"]);
        let why: Vec<_> = out
            .ruled_out
            .iter()
            .map(|(n, w)| format!("{}: {w}", n.id))
            .collect();
        assert_eq!(
            why,
            [
                "off: its agent is not connected",
                "down: its Docker daemon is unreachable (connection refused)",
                "ro: its agent's policy refuses calls that change the node",
                "new: it connected a moment ago and the relay is still listing it; try again in a moment",
            ]
        );
    }
}
