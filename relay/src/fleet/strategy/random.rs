//! Random: any node that passed the filters, drawn from the seed the
//! placement was given.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::Strategy;
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The random strategy.
#[derive(Debug)]
pub struct Random;

impl Strategy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn rank(&self, _: &Ask, nodes: &mut Vec<&Node>, seed: u64, keep: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keep = keep.min(nodes.len());
        let (picked, _) = nodes.partial_shuffle(&mut rng, keep);
        let picked = picked.to_vec();
        *nodes = picked;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::fleet::filter::fake::node;

    #[test]
    fn random_uses_every_node_over_thirty_seeds_and_repeats_a_seed() {
        let fleet = [node("a"), node("b"), node("c")];
        let mut firsts = BTreeSet::new();
        for seed in 0..30 {
            let mut nodes: Vec<&Node> = fleet.iter().collect();
            Random.rank(&Ask::default(), &mut nodes, seed, usize::MAX);
            firsts.insert(nodes[0].id.to_string());
            let mut again: Vec<&Node> = fleet.iter().collect();
            Random.rank(&Ask::default(), &mut again, seed, usize::MAX);
            assert_eq!(nodes[0].id, again[0].id);
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
    }
}
