//! Placement: a pure function from the fleet's nodes and a create's
//! [`Ask`] to the candidates, best first, or to why there are none, filter
//! by filter. It never does IO; the caller tries the candidates in order,
//! since a node's daemon has the final word on names and ports.

use std::collections::BTreeMap;
use std::fmt;

use tunnelgate_proto::NodeId;

use super::ask::Ask;
use super::filter::{self, NodeTest};
use super::index::Index;
use super::strategy::Strategy;
use super::view::Node;

/// The candidates for one create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Best first, at most [`CANDIDATES`]; never empty.
    pub ranked: Vec<NodeId>,
    /// What the filters said on the way (soft filters dropped).
    pub notes: Vec<String>,
}

/// Why no node can run a container: what each filter ruled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoNode {
    /// How many nodes the fleet has.
    pub nodes: usize,
    /// Each filter that ruled any out, in the order they ran, with each
    /// node it ruled out and why.
    pub steps: Vec<(&'static str, Vec<(NodeId, String)>)>,
    /// What the filters said on the way.
    pub notes: Vec<String>,
}

/// How many candidates a placement ranks: the creates tried on them stop
/// far sooner, and ranking a few is much cheaper than ranking all.
pub const CANDIDATES: usize = 8;

/// How many nodes are named for one reason before "and N more".
const NAMED_PER_REASON: usize = 3;
/// How many reasons are given per filter before "and N more".
const REASONS_PER_FILTER: usize = 4;

impl fmt::Display for NoNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str(
                "no node can run this container: the fleet has no nodes; enrol one with a join \
                 token (tunnelgate-relay token create)",
            );
        }
        write!(
            f,
            "no node can run this container; nothing was created. Of {} node(s):",
            self.nodes
        )?;
        for (name, out) in &self.steps {
            let mut by_reason: BTreeMap<&str, Vec<&NodeId>> = BTreeMap::new();
            for (node, why) in out {
                by_reason.entry(why).or_default().push(node);
            }
            write!(f, " {name} ruled out {}:", out.len())?;
            let mut first = true;
            for (why, nodes) in by_reason.iter().take(REASONS_PER_FILTER) {
                let mut named: Vec<String> = nodes
                    .iter()
                    .take(NAMED_PER_REASON)
                    .map(ToString::to_string)
                    .collect();
                if nodes.len() > NAMED_PER_REASON {
                    named.push(format!("{} more", nodes.len() - NAMED_PER_REASON));
                }
                let sep = if first { " " } else { "; " };
                write!(f, "{sep}{} ({why})", named.join(", "))?;
                first = false;
            }
            if by_reason.len() > REASONS_PER_FILTER {
                write!(
                    f,
                    "; and {} other reasons",
                    by_reason.len() - REASONS_PER_FILTER
                )?;
            }
            f.write_str(".")?;
        }
        for note in &self.notes {
            write!(f, " Also: {note}.")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoNode {}

/// Every filter as tests of one node ([`filter::Filter::tests`]), or
/// `None` when a filter must run on its own.
fn tests_for(ask: &Ask) -> Option<Vec<NodeTest<'_>>> {
    let mut tests = Vec::new();
    for filter in filter::all() {
        tests.extend(filter.tests(ask)?);
    }
    Some(tests)
}

/// Runs every filter in one pass over the nodes, when each is no more
/// than tests of one node: the nodes left, in order, or `None` when a
/// filter must run on its own.
fn run_tests<'v>(fleet: &[&'v Node], ask: &Ask) -> Option<Vec<&'v Node>> {
    let tests = tests_for(ask)?;
    Some(
        fleet
            .iter()
            .copied()
            .filter(|n| tests.iter().all(|t| t(n)))
            .collect(),
    )
}

/// Runs every filter in order: the nodes left and the notes, or (with
/// reasons when `explain`) why none is.
fn run_filters<'v>(
    fleet: &[&'v Node],
    ask: &Ask,
    explain: bool,
) -> Result<(Vec<&'v Node>, Vec<String>), NoNode> {
    let mut nodes = fleet.to_vec();
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    for filter in filter::all() {
        let out = filter.filter(ask, fleet, nodes, explain);
        notes.extend(out.notes);
        if explain && !out.ruled_out.is_empty() {
            let named = out
                .ruled_out
                .into_iter()
                .map(|(n, why)| (n.id.clone(), why))
                .collect();
            steps.push((filter.name(), named));
        }
        nodes = out.kept;
        if nodes.is_empty() {
            return Err(NoNode {
                nodes: fleet.len(),
                steps,
                notes,
            });
        }
    }
    Ok((nodes, notes))
}

/// Ranks the nodes of `fleet` that can run `ask`, best first, by
/// `strategy` (which may draw on `seed`), or says why none can.
pub fn place(
    fleet: &[&Node],
    ask: &Ask,
    strategy: &dyn Strategy,
    seed: u64,
) -> Result<Placement, NoNode> {
    let passed = match run_tests(fleet, ask) {
        Some(left) => (!left.is_empty()).then_some((left, Vec::new())),
        None => run_filters(fleet, ask, false).ok(),
    };
    let Some((mut nodes, notes)) = passed else {
        // Only now are the reasons written out, by the filters in turn.
        return Err(run_filters(fleet, ask, true).err().unwrap_or(NoNode {
            nodes: fleet.len(),
            steps: Vec::new(),
            notes: Vec::new(),
        }));
    };
    strategy.rank(ask, &mut nodes, seed, CANDIDATES);
    Ok(Placement {
        ranked: nodes.into_iter().map(|n| n.id.clone()).collect(),
        notes,
    })
}

/// [`place`] over the nodes of `all` (every node of the tenant, in id
/// order, as the view hands them out with `index`) that `sees` admits,
/// with the same answer. When every filter of the ask is tests of one
/// node, its hard constraints first pick their nodes from the index, so
/// the filters run over those alone rather than over every node.
pub fn place_indexed(
    all: &[&Node],
    index: &Index,
    sees: impl Fn(&Node) -> bool,
    ask: &Ask,
    strategy: &dyn Strategy,
    seed: u64,
) -> Result<Placement, NoNode> {
    // A soft constraint is dropped when it matches none of the nodes left,
    // so the index answers only asks whose constraints are all hard.
    let hard = ask.constraints.iter().all(|e| !e.soft);
    if let Some(held) = hard.then(|| index.holding(all, &ask.constraints)).flatten() {
        // The other filters, as tests of one node if they can be.
        let rest = Ask {
            constraints: Vec::new(),
            ..ask.clone()
        };
        let tests = tests_for(&rest);
        if let Some(tests) = &tests {
            let mut kept: Vec<&Node> = held
                .ones()
                .map(|p| all[p])
                .filter(|n| sees(n) && tests.iter().all(|t| t(n)))
                .collect();
            if !kept.is_empty() {
                strategy.rank(ask, &mut kept, seed, CANDIDATES);
                return Ok(Placement {
                    ranked: kept.into_iter().map(|n| n.id.clone()).collect(),
                    notes: Vec::new(),
                });
            }
        }
    }
    let fleet: Vec<&Node> = all.iter().copied().filter(|n| sees(n)).collect();
    place(&fleet, ask, strategy, seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::expr::Expr;
    use crate::fleet::filter::fake::node;
    use crate::fleet::strategy::Spread;
    use crate::fleet::view::Health;

    #[test]
    fn an_impossible_ask_says_filter_by_filter_what_ruled_each_node_out() {
        let mut a = node("a");
        a.labels.insert("region".into(), "eu".into());
        let mut b = node("b");
        b.labels.insert("region".into(), "eu".into());
        let mut c = node("c");
        c.health = Health::Offline;
        let fleet = [&a, &b, &c];
        let ask = Ask {
            constraints: vec![Expr::parse("region==us").unwrap()],
            ..Ask::default()
        };
        let err = place(&fleet, &ask, &Spread, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no node can run this container; nothing was created. Of 3 node(s): \
             health ruled out 1: c (its agent is not connected). \
             constraint ruled out 2: a, b (its region is \"eu\" (wanted region==us))."
        );
    }

    #[test]
    fn the_candidates_come_ranked_and_soft_notes_travel_with_them() {
        let mut a = node("a");
        a.put_container(crate::fleet::filter::fake::container("x", "1"));
        let b = node("b");
        let ask = Ask {
            constraints: vec![Expr::parse("zone==~z9").unwrap()],
            ..Ask::default()
        };
        let placed = place(&[&a, &b], &ask, &Spread, 0).unwrap();
        assert_eq!(
            placed.ranked,
            [NodeId::new("b").unwrap(), NodeId::new("a").unwrap()]
        );
        assert_eq!(placed.notes.len(), 1);
        let none = place(&[], &ask, &Spread, 0).unwrap_err();
        assert!(none.to_string().contains("has no nodes"), "{none}");
    }

    fn port(port: u16) -> crate::fleet::view::HostPort {
        crate::fleet::view::HostPort {
            ip: String::new(),
            port,
            proto: "tcp".into(),
        }
    }

    /// `count` nodes in three zones: one read-only, one offline, one with
    /// its daemon down, reservations and labels and host ports in turn.
    fn mixed_fleet(count: usize) -> Vec<Node> {
        use crate::fleet::filter::fake::container;
        let mut nodes: Vec<Node> = (0..count).map(|i| node(&format!("n{i:03}"))).collect();
        for (i, n) in nodes.iter_mut().enumerate() {
            n.labels.insert("zone".into(), format!("z{}", i % 3));
            n.writable = i != 4;
            if i == 5 {
                n.health = Health::Offline;
            }
            if i == 6 {
                n.health = Health::DaemonDown("gone".into());
            }
            let mut c = container(&format!("c{i}"), &format!("{i}"));
            c.memory = (i as u64 % 4) << 30;
            c.nano_cpus = (i as u64 % 3) * 1_500_000_000;
            if i % 2 == 0 {
                c.labels = [("tier".to_owned(), "web".to_owned())]
                    .into_iter()
                    .collect();
            }
            if i % 5 == 0 {
                c.host_ports = vec![port(80)];
            }
            n.put_container(c);
        }
        nodes
    }

    fn parse(t: &[&str]) -> Vec<Expr> {
        t.iter().map(|t| Expr::parse(t).unwrap()).collect()
    }

    #[test]
    fn the_one_pass_keeps_the_nodes_the_filters_in_turn_keep() {
        let nodes = mixed_fleet(12);
        let fleet: Vec<&Node> = nodes.iter().collect();
        let asks = [
            Ask::default(),
            Ask {
                memory: 1 << 30,
                ..Ask::default()
            },
            Ask {
                nano_cpus: 2_000_000_000,
                ..Ask::default()
            },
            Ask {
                constraints: parse(&["zone!=z1", "node!=/n00[01]/"]),
                ..Ask::default()
            },
            Ask {
                affinities: parse(&["tier==web"]),
                host_ports: vec![port(80)],
                ..Ask::default()
            },
            Ask {
                affinities: parse(&["tier!=web"]),
                memory: 2 << 30,
                ..Ask::default()
            },
        ];
        for ask in &asks {
            let one_pass = run_tests(&fleet, ask).expect("no soft filter, no dependency");
            let in_turn = run_filters(&fleet, ask, false)
                .map(|(kept, _)| kept)
                .unwrap_or_default();
            assert_eq!(
                crate::fleet::filter::fake::ids(&one_pass),
                crate::fleet::filter::fake::ids(&in_turn),
                "{ask:?}"
            );
            assert!(
                one_pass.len() < fleet.len(),
                "each ask rules some out: {ask:?}"
            );
        }
        let soft = Ask {
            constraints: parse(&["zone==~z9"]),
            ..Ask::default()
        };
        assert!(
            run_tests(&fleet, &soft).is_none(),
            "a soft filter runs on its own"
        );
    }

    #[test]
    fn many_nodes_with_one_reason_are_counted_not_all_named() {
        let nodes: Vec<Node> = (0..10).map(|i| node(&format!("n{i}"))).collect();
        let fleet: Vec<&Node> = nodes.iter().collect();
        let ask = Ask {
            memory: 64 << 30,
            ..Ask::default()
        };
        let text = place(&fleet, &ask, &Spread, 0).unwrap_err().to_string();
        assert!(
            text.contains("resources ruled out 10: n0, n1, n2, 7 more (it has 4 GiB"),
            "{text}"
        );
    }

    #[test]
    fn a_placement_through_the_index_answers_as_one_over_every_node_seen() {
        use crate::fleet::strategy::{Binpack, Random};
        // Many more nodes than the candidates a placement keeps.
        let nodes = mixed_fleet(300);
        let all: Vec<&Node> = nodes.iter().collect();
        let index = Index::default();
        // A scoped caller: n003, in zone z0, is not its to place onto.
        let sees = |n: &Node| n.id.as_str() != "n003";
        let seen: Vec<&Node> = all.iter().copied().filter(|n| sees(n)).collect();
        let asks = [
            Ask {
                constraints: parse(&["zone==z0"]),
                ..Ask::default()
            },
            Ask {
                constraints: parse(&["zone==Z0", "node!=/n00[0-6]/"]),
                memory: 1 << 30,
                ..Ask::default()
            },
            // A pattern over 300 ids and hostnames.
            Ask {
                constraints: parse(&["zone==z0", "node==/n00[0-6]/"]),
                ..Ask::default()
            },
            Ask {
                constraints: parse(&["zone!=z1", "zone==/z[0-9]/"]),
                affinities: parse(&["tier==web"]),
                host_ports: vec![port(80)],
                ..Ask::default()
            },
            // None fits: the answer is the filters' own explanation.
            Ask {
                constraints: parse(&["zone==z9"]),
                ..Ask::default()
            },
            // Soft: the index is not asked.
            Ask {
                constraints: parse(&["zone==~z9", "zone==z2"]),
                ..Ask::default()
            },
        ];
        for ask in &asks {
            for strategy in [&Spread as &dyn Strategy, &Binpack, &Random] {
                for seed in 0..3 {
                    assert_eq!(
                        place_indexed(&all, &index, sees, ask, strategy, seed),
                        place(&seen, ask, strategy, seed),
                        "{ask:?} by {}",
                        strategy.name()
                    );
                }
            }
        }
        let placed = place_indexed(&all, &index, sees, &asks[0], &Spread, 0).unwrap();
        assert!(!placed.ranked.is_empty());
        assert!(placed.ranked.iter().all(|n| n.as_str() != "n003"));
    }
}
