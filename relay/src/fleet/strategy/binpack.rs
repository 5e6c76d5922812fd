//! Binpack: the node with the most reserved (the filters already left
//! only nodes it fits on), then the most containers, first, so one node
//! fills before the next is used.

use std::cmp::Reverse;

use super::{best_by, score, Strategy};
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The binpack strategy.
#[derive(Debug)]
pub struct Binpack;

impl Strategy for Binpack {
    fn name(&self) -> &'static str {
        "binpack"
    }

    fn rank(&self, ask: &Ask, nodes: &mut Vec<&Node>, _: u64, keep: usize) {
        best_by(nodes, keep, |n| {
            (Reverse(score(ask, n)), Reverse(n.containers().len()))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{container, ids, node};
    use crate::fleet::filter::{Filter, Resources};

    #[test]
    fn binpack_fills_one_node_by_memory_before_the_next() {
        let mut fleet = [node("a"), node("b")];
        let ask = Ask {
            memory: 1 << 30,
            ..Ask::default()
        };
        let mut placed = Vec::new();
        for i in 0..6 {
            let pick = {
                let all: Vec<&Node> = fleet.iter().collect();
                let mut fits = Resources.filter(&ask, &all, all.clone(), true).kept;
                Binpack.rank(&ask, &mut fits, 0, usize::MAX);
                fits[0].id.clone()
            };
            placed.push(pick.to_string());
            let n = fleet.iter_mut().find(|n| n.id == pick).unwrap();
            let mut c = container(&format!("c{i}"), &format!("{i}"));
            c.memory = 1 << 30;
            n.put_container(c);
        }
        assert_eq!(placed, ["a", "a", "a", "a", "b", "b"]);
    }

    #[test]
    fn with_nothing_reserved_the_fuller_node_comes_first() {
        let mut a = node("a");
        a.put_container(container("x", "1"));
        let b = node("b");
        let mut nodes = vec![&b, &a];
        Binpack.rank(&Ask::default(), &mut nodes, 0, usize::MAX);
        assert_eq!(ids(&nodes), ["a", "b"]);
    }
}
