//! Spread: the node with the least reserved, then the fewest containers,
//! first; the node id breaks the last tie, so a placement is repeatable.

use super::{best_by, score, Strategy};
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The spread strategy.
#[derive(Debug)]
pub struct Spread;

impl Strategy for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn rank(&self, ask: &Ask, nodes: &mut Vec<&Node>, _: u64, keep: usize) {
        best_by(nodes, keep, |n| (score(ask, n), n.containers().len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{container, ids, node};

    #[test]
    fn spread_takes_the_emptiest_node_first() {
        let mut a = node("a");
        a.put_container(container("x", "1"));
        let b = node("b");
        let mut c = node("c");
        let mut heavy = container("y", "2");
        heavy.memory = 2 << 30;
        c.put_container(heavy);
        let mut nodes = vec![&a, &b, &c];
        Spread.rank(&Ask::default(), &mut nodes, 0, usize::MAX);
        assert_eq!(ids(&nodes), ["b", "a", "c"]);
    }

    #[test]
    fn six_containers_spread_two_by_two_on_three_empty_nodes() {
        let mut fleet = [node("a"), node("b"), node("c")];
        for i in 0..6 {
            let pick = {
                let mut nodes: Vec<&Node> = fleet.iter().collect();
                Spread.rank(&Ask::default(), &mut nodes, 0, usize::MAX);
                nodes[0].id.clone()
            };
            let n = fleet.iter_mut().find(|n| n.id == pick).unwrap();
            n.put_container(container(&format!("c{i}"), &format!("{i}")));
        }
        let counts: Vec<_> = fleet.iter().map(|n| n.containers().len()).collect();
        assert_eq!(counts, [2, 2, 2]);
    }
}
