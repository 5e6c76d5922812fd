//! Which of a tenant's nodes have which value of a constraint's key
//! (`region`, `node`, `storagedriver`, ...), so that a placement's hard
//! constraints pick their nodes by a lookup over the key's few values
//! rather than by reading every node's labels: over 10,000 nodes those
//! reads were most of a filtered placement's time.
//!
//! A key's values are gathered the first time a constraint names it and
//! kept until a node comes, goes, or changes something a constraint can
//! read ([`super::cache`] says when); so is each constraint's answer,
//! since a fleet's creates (a compose file's services, a CI's jobs) ask
//! the same few constraints again and again. Positions are those of the nodes in
//! id order, as the view hands them out under the same lock. Plain data:
//! no IO, and nothing here decides a placement; it only narrows the nodes
//! the filters then run over.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use fixedbitset::FixedBitSet;

use super::expr::{Expr, Matcher};
use super::filter::Source;
use super::view::Node;

/// Answers kept per key before they are all forgotten: enough for the
/// constraints a fleet's creates keep asking, bounded against a caller
/// that asks a new one each time.
const MAX_ANSWERS: usize = 64;

/// The values of every key a constraint has named, over one set of nodes.
#[derive(Debug, Default)]
pub struct Index {
    keys: Mutex<HashMap<Box<str>, Key>>,
}

/// One key: its values, and the answers worked out from them so far.
#[derive(Debug)]
struct Key {
    values: KeyValues,
    /// By the constraint's text.
    answers: HashMap<Box<str>, FixedBitSet>,
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

    /// The nodes for which `expr` holds: a plain value is looked up, a
    /// pattern is matched once per distinct value.
    fn holding(&self, expr: &Expr) -> FixedBitSet {
        let mut set = FixedBitSet::with_capacity(self.nodes);
        let mut add = |at: &[u32]| set.extend(at.iter().map(|&p| p as usize));
        match &expr.value {
            Matcher::Plain(want, _) => {
                if let Some(at) = self.by_lower.get(want.to_ascii_lowercase().as_str()) {
                    add(at);
                }
            }
            Matcher::Pattern(_) => {
                for (value, at) in &self.by_value {
                    if expr.matches_value(value) {
                        add(at);
                    }
                }
            }
        }
        // `!=` holds where no value matches, a node without the key too.
        if !expr.equal {
            set.toggle_range(..);
        }
        set
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
    /// which every hard constraint of `exprs` holds, or `None` when there
    /// is none. Soft constraints are left to the filters.
    pub fn holding(&self, nodes: &[&Node], exprs: &[Expr]) -> Option<FixedBitSet> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept: Option<FixedBitSet> = None;
        for expr in exprs.iter().filter(|e| !e.soft) {
            let key = match keys.get_mut(expr.key.as_str()) {
                // The count is a guard only: the view clears the index
                // whenever a node comes or goes.
                Some(key) if key.values.nodes == nodes.len() => key,
                _ => {
                    let key = Key {
                        values: KeyValues::gather(&expr.key, nodes),
                        answers: HashMap::new(),
                    };
                    keys.insert(expr.key.as_str().into(), key);
                    keys.get_mut(expr.key.as_str()).expect("just put in")
                }
            };
            if !key.answers.contains_key(expr.text.as_str()) {
                if key.answers.len() == MAX_ANSWERS {
                    key.answers.clear();
                }
                let set = key.values.holding(expr);
                key.answers.insert(expr.text.as_str().into(), set);
            }
            let set = &key.answers[expr.text.as_str()];
            match &mut kept {
                Some(k) => k.intersect_with(set),
                None => kept = Some(set.clone()),
            }
        }
        kept
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
            // Worked out, then the answer kept.
            for _ in 0..2 {
                let set = index.holding(&all, std::slice::from_ref(&expr)).unwrap();
                assert_eq!(set.ones().collect::<Vec<_>>(), by_node, "{text}");
            }
        }
        let both = [
            Expr::parse("storagedriver==overlay2").unwrap(),
            Expr::parse("node!=a").unwrap(),
        ];
        let set = index.holding(&all, &both).unwrap();
        assert_eq!(set.ones().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn soft_constraints_are_left_to_the_filters_and_answers_stay_right_past_their_bound() {
        let nodes: Vec<Node> = (0..300).map(|i| node(&format!("n{i}"))).collect();
        let all: Vec<&Node> = nodes.iter().collect();
        let index = Index::default();
        let soft = [Expr::parse("node==~n1").unwrap()];
        assert!(index.holding(&all, &soft).is_none());
        // More constraints than answers are kept, each asked twice.
        for _ in 0..2 {
            for i in 0..MAX_ANSWERS + 8 {
                let expr = [Expr::parse(&format!("node==/^n{i}$/")).unwrap()];
                let set = index.holding(&all, &expr).unwrap();
                assert_eq!(set.ones().collect::<Vec<_>>(), [i]);
            }
        }
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
