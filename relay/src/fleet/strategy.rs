//! How the nodes that passed every filter are ranked (Swarm's
//! `scheduler/strategy`, one file per strategy). A node's score is what
//! its running containers reserve plus what the new one asks, in percent
//! of its total, CPU and memory added, as Swarm's `weighted_node` had it;
//! ties go by container count.

mod binpack;
mod random;
mod spread;

use std::fmt;
use std::str::FromStr;

pub use binpack::Binpack;
pub use random::Random;
pub use spread::Spread;

use super::ask::Ask;
use super::view::Node;

/// One way of ranking candidates.
pub trait Strategy: Sync + fmt::Debug {
    /// Its name, as the setting spells it.
    fn name(&self) -> &'static str;

    /// Orders `nodes` (given in id order) best first and keeps the best
    /// `keep`; `seed` is the only randomness it may use.
    fn rank(&self, ask: &Ask, nodes: &mut Vec<&Node>, seed: u64, keep: usize);
}

/// Keeps the `keep` nodes with the least `key`, in order: each key
/// computed once, then a partial selection and a sort of what is kept,
/// so ranking 10,000 nodes for a few candidates does not sort them all.
/// Of nodes with the same key the one given first wins: nodes come in
/// id order, as the view keeps them, so that is the lower id, found
/// without comparing ids (with a few keys among 10,000 nodes, the id
/// comparisons of the ties were a tenth of a placement).
pub fn best_by<K: Ord + Copy>(nodes: &mut Vec<&Node>, keep: usize, key: impl Fn(&Node) -> K) {
    let mut keyed: Vec<(K, usize)> = nodes.iter().enumerate().map(|(i, n)| (key(n), i)).collect();
    if keep == 0 {
        keyed.clear();
    } else if keyed.len() > keep {
        keyed.select_nth_unstable(keep - 1);
        keyed.truncate(keep);
    }
    keyed.sort_unstable();
    *nodes = keyed.into_iter().map(|(_, i)| nodes[i]).collect();
}

/// The strategy a relay places with (`--fleet-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyName {
    /// Fewest reserved resources, then fewest containers, first.
    #[default]
    Spread,
    /// Most reserved resources (that still fit), then most containers.
    Binpack,
    /// Any node that passed the filters.
    Random,
}

impl StrategyName {
    /// The strategy itself.
    pub fn strategy(self) -> &'static dyn Strategy {
        match self {
            Self::Spread => &Spread,
            Self::Binpack => &Binpack,
            Self::Random => &Random,
        }
    }
}

impl FromStr for StrategyName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Self::Spread),
            "binpack" => Ok(Self::Binpack),
            "random" => Ok(Self::Random),
            other => Err(format!(
                "unknown fleet strategy {other:?}: the strategies are spread, binpack and random"
            )),
        }
    }
}

impl fmt::Display for StrategyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy().name())
    }
}

/// What the node would have reserved with the new container, in percent
/// of its CPUs plus percent of its memory (a resource it does not report
/// counts nothing).
pub fn score(ask: &Ask, node: &Node) -> u64 {
    // Memory below 2^57 bytes and CPUs below 2^27 keep `used * 100`
    // within a u64, far beyond any host; saturate rather than wrap.
    let percent = |used: u64, total: u64| match total {
        0 => 0,
        t => used.saturating_mul(100) / t,
    };
    let cpu = percent(
        node.reserved_nano_cpus() + ask.nano_cpus,
        node.facts.ncpu * 1_000_000_000,
    );
    let mem = percent(node.reserved_memory() + ask.memory, node.facts.mem_total);
    cpu + mem
}
