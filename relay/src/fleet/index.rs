//! Which of a tenant's nodes have which value of a constraint's key
//! (`region`, `node`, `storagedriver`, ...), so that a placement's hard
//! constraints pick their nodes by a lookup over the key's few values
//! rather than by reading every node's labels: over 10,000 nodes those
//! reads were most of a filtered placement's time.
//!
//! A key's values are gathered the first time a constraint names it and
//! kept until a node comes, goes, or changes something a constraint can
//! read; [`super::cache`] says when. Positions are those of the nodes in
//! id order, as the view hands them out under the same lock. Plain data:
//! no IO, and nothing here decides a placement; it only narrows the nodes
//! the filters then run over.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use fixedbitset::FixedBitSet;

use super::expr::{Expr, Matcher};
use super::filter::Source;
use super::view::Node;

/// Above this many distinct values, a pattern is tested at each node
/// instead: matching it against every value (a `node==/web-.*/` over
/// 10,000 ids and hostnames) would cost what testing the nodes does.
const MAX_PATTERN_VALUES: usize = 256;

/// The values of every key a constraint has named, over one set of nodes.
#[derive(Debug, Default)]
pub struct Index {
    keys: Mutex<HashMap<Box<str>, Arc<KeyValues>>>,
}

/// One key's values: which nodes (by position) have each.
#[derive(Debug)]
struct KeyValues {
    /// How many nodes the positions are of.
    nodes: usize,
    /// Each value as the nodes have it (patterns match it as written).
    by_value: HashMap<Box<str>, Vec<u32>>,
    /// Each value lowercased (plain values match in any case).
    by_lower: HashMap<Box<str>, Vec<u32>>,
}

impl KeyValues {
    fn gather(key: &str, nodes: &[&Node]) -> Self {
        let source = Source::of(key);
        let (mut by_value, mut by_lower) = (HashMap::new(), HashMap::<Box<str>, Vec<u32>>::new());
        for (pos, node) in (0u32..).zip(nodes) {
            for value in source.values(node) {
                let at: &mut Vec<u32> = by_value.entry(value.into()).or_default();
                at.push(pos);
                let lower = by_lower
                    .entry(value.to_ascii_lowercase().into())
                    .or_default();
                // A node whose two values differ only in case is listed once.
                if lower.last() != Some(&pos) {
                    lower.push(pos);
                }
            }
        }
        Self {
            nodes: nodes.len(),
            by_value,
            by_lower,
        }
    }

    /// The nodes for which `expr` holds, or `None` when testing each node
    /// is as cheap.
    fn holding(&self, expr: &Expr) -> Option<FixedBitSet> {
        let mut set = FixedBitSet::with_capacity(self.nodes);
        let mut add = |at: &[u32]| set.extend(at.iter().map(|&p| p as usize));
        match &expr.value {
            Matcher::Plain(want, _) => {
                if let Some(at) = self.by_lower.get(want.to_ascii_lowercase().as_str()) {
                    add(at);
                }
            }
            Matcher::Pattern(re) => {
                if self.by_value.len() > MAX_PATTERN_VALUES {
                    return None;
                }
                for (value, at) in &self.by_value {
                    if re.is_match(value) {
                        add(at);
                    }
                }
            }
        }
        // `!=` holds where no value matches, a node without the key too.
        if !expr.equal {
            set.toggle_range(..);
        }
        Some(set)
    }
}

impl Index {
    /// Forgets every key's values: the nodes changed.
    pub fn clear(&mut self) {
        self.keys
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The positions in `nodes` (every node, in id order) of those for
    /// which every hard constraint of `exprs` the index can answer holds,
    /// with the constraints it left to the filters (the soft ones, and
    /// patterns over many values); `None` when it can answer none.
    pub fn holding(&self, nodes: &[&Node], exprs: &[Expr]) -> Option<(FixedBitSet, Vec<Expr>)> {
        let mut kept: Option<FixedBitSet> = None;
        let mut left = Vec::new();
        for expr in exprs {
            let set = match expr.soft {
                true => None,
                false => self.key(&expr.key, nodes).holding(expr),
            };
            match (set, &mut kept) {
                (None, _) => left.push(expr.clone()),
                (Some(set), Some(k)) => k.intersect_with(&set),
                (Some(set), None) => kept = Some(set),
            }
        }
        kept.map(|k| (k, left))
    }

    fn key(&self, key: &str, nodes: &[&Node]) -> Arc<KeyValues> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match keys.get(key) {
            // The count is a guard only: the view clears the index
            // whenever a node comes or goes.
            Some(values) if values.nodes == nodes.len() => values.clone(),
            _ => {
                let values = Arc::new(KeyValues::gather(key, nodes));
                keys.insert(key.into(), values.clone());
                values
            }
        }
    }
}

/// A digest of everything of a node a constraint can read: when it is the
/// same before and after a change, the index still holds.
pub fn constraint_stamp(node: &Node) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let f = &node.facts;
    (&node.id, &node.hostname, &node.labels, &node.engine_labels).hash(&mut h);
    (&f.storage_driver, &f.kernel_version).hash(&mut h);
    (&f.operating_system, &f.architecture).hash(&mut h);
    (&node.transport, &node.route, &node.relay).hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::node;

    /// Nodes with a label in mixed case, a daemon label of the same key,
    /// one without it, and facts.
    fn fleet() -> Vec<Node> {
        let mut a = node("a");
        a.labels.insert("region".into(), "EU".into());
        a.facts.storage_driver = "overlay2".into();
        a.hostname = "web-1".into();
        let mut b = node("b");
        b.engine_labels.insert("region".into(), "us".into());
        b.labels.insert("region".into(), "eu-west".into());
        b.facts.storage_driver = "vfs".into();
        let mut c = node("c");
        c.facts.storage_driver = "overlay2".into();
        c.hostname = "db-1".into();
        vec![a, b, c]
    }

    #[test]
    fn the_index_keeps_the_nodes_each_constraint_keeps_when_tested_node_by_node() {
        let nodes = fleet();
        let all: Vec<&Node> = nodes.iter().collect();
        let index = Index::default();
        for text in [
            "region==eu",
            "region==EU",
            "region!=eu",
            "region==eu*",
            "region==/^eu/",
            "region==/^EU$/",
            "region==us",
            "region!=/.*/",
            "disk==ssd",
            "disk!=ssd",
            "storagedriver==overlay2",
            "node==web-*",
            "node==c",
            "node!=/-1$/",
        ] {
            let expr = Expr::parse(text).unwrap();
            let source = Source::of(&expr.key);
            let by_node: Vec<usize> = (0..all.len())
                .filter(|&i| expr.holds(source.values(all[i])))
                .collect();
            let (set, left) = index.holding(&all, std::slice::from_ref(&expr)).unwrap();
            assert!(left.is_empty(), "{text}");
            assert_eq!(set.ones().collect::<Vec<_>>(), by_node, "{text}");
        }
        let both = [
            Expr::parse("storagedriver==overlay2").unwrap(),
            Expr::parse("node!=a").unwrap(),
        ];
        let (set, _) = index.holding(&all, &both).unwrap();
        assert_eq!(set.ones().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn soft_constraints_and_patterns_over_many_values_are_left_to_the_filters() {
        let nodes: Vec<Node> = (0..MAX_PATTERN_VALUES + 1)
            .map(|i| node(&format!("n{i}")))
            .collect();
        let all: Vec<&Node> = nodes.iter().collect();
        let index = Index::default();
        let many = [Expr::parse("node==/^n1/").unwrap()];
        assert!(index.holding(&all, &many).is_none());
        let soft = [Expr::parse("node==~n1").unwrap()];
        assert!(index.holding(&all, &soft).is_none());
        // A plain value is one lookup however many values there are; the
        // rest is left to the filters.
        let mixed = [
            Expr::parse("node==N7").unwrap(),
            Expr::parse("node==/^n1/").unwrap(),
            Expr::parse("node==~n1").unwrap(),
        ];
        let (set, left) = index.holding(&all, &mixed).unwrap();
        assert_eq!(set.ones().collect::<Vec<_>>(), [7]);
        let left: Vec<&str> = left.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(left, ["node==/^n1/", "node==~n1"]);
    }

    #[test]
    fn the_stamp_changes_with_what_a_constraint_reads_and_not_with_containers() {
        let mut n = node("a");
        let before = constraint_stamp(&n);
        n.put_container(crate::fleet::filter::fake::container("x", "1"));
        assert_eq!(constraint_stamp(&n), before);
        n.engine_labels.insert("disk".into(), "ssd".into());
        assert_ne!(constraint_stamp(&n), before);
    }
}
