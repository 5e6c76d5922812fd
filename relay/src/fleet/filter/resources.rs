//! Room for the container: the CPUs and memory it reserves must fit in
//! what the node's running containers leave of its total.

use super::{Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The resources filter.
#[derive(Debug)]
pub struct Resources;

/// Bytes as MiB or GiB, for messages.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n => format!("{} MiB", n >> 20),
    }
}

/// Billionths of a CPU as CPUs, for messages (`1.5`, `2`).
pub fn cpus(nano: u64) -> String {
    (nano as f64 / 1e9).to_string()
}

/// A node's memory in bytes and CPUs in billionths that no container
/// reserves.
fn unreserved(node: &Node) -> (u64, u64) {
    let cpu_total = node.facts.ncpu * 1_000_000_000;
    (
        node.facts.mem_total.saturating_sub(node.reserved_memory()),
        cpu_total.saturating_sub(node.reserved_nano_cpus()),
    )
}

impl Filter for Resources {
    fn name(&self) -> &'static str {
        "resources"
    }

    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        Some(match (ask.memory, ask.nano_cpus) {
            // Nothing reserved fits anywhere.
            (0, 0) => Vec::new(),
            _ => vec![Box::new(|n: &Node| {
                let (mem_free, cpu_free) = unreserved(n);
                ask.memory <= mem_free && ask.nano_cpus <= cpu_free
            })],
        })
    }

    fn filter<'v>(
        &self,
        ask: &Ask,
        _: &[&'v Node],
        mut nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v> {
        let mut out = Outcome::new(explain);
        nodes.retain(|&node| {
            let (mem_free, cpu_free) = unreserved(node);
            if ask.memory > mem_free {
                out.rule_out(node, || {
                    format!(
                        "it has {} of {} memory unreserved; this container reserves {}",
                        bytes(mem_free),
                        bytes(node.facts.mem_total),
                        bytes(ask.memory)
                    )
                });
                false
            } else if ask.nano_cpus > cpu_free {
                out.rule_out(node, || {
                    format!(
                        "it has {} of {} CPUs unreserved; this container reserves {}",
                        cpus(cpu_free),
                        node.facts.ncpu,
                        cpus(ask.nano_cpus)
                    )
                });
                false
            } else {
                true
            }
        });
        out.kept = nodes;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{container, ids, node};

    #[test]
    fn a_container_fits_only_where_its_reservation_is_free() {
        let mut a = node("a");
        let mut big = container("big", "a1");
        big.memory = 3 << 30;
        big.nano_cpus = 3_000_000_000;
        a.put_container(big);
        let b = node("b");
        let all = [&a, &b];
        let run = |memory, nano_cpus| {
            let ask = Ask {
                memory,
                nano_cpus,
                ..Ask::default()
            };
            Resources.filter(&ask, &all, all.to_vec(), true)
        };
        assert_eq!(ids(&run(1 << 30, 0).kept), ["a", "b"]);
        let out = run(2 << 30, 0);
        assert_eq!(ids(&out.kept), ["b"]);
        assert_eq!(
            out.ruled_out[0].1,
            "it has 1 GiB of 4 GiB memory unreserved; this container reserves 2 GiB"
        );
        let out = run(0, 1_500_000_000);
        assert_eq!(ids(&out.kept), ["b"]);
        assert_eq!(
            out.ruled_out[0].1,
            "it has 1 of 4 CPUs unreserved; this container reserves 1.5"
        );
        assert!(run(5 << 30, 0).kept.is_empty(), "fits nowhere");
        assert_eq!(
            ids(&run(0, 0).kept),
            ["a", "b"],
            "no reservation always fits"
        );
    }
}
