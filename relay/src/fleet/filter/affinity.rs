//! Affinities to what is already on a node: `container==NAME` (a name or
//! an id prefix), `image==NAME` (a name, with or without tag, or an id),
//! or any other key as a container label (`com.example.tier==web`).
//! `!=` keeps the nodes that have none of it.

use super::{by_expressions, expression_tests, Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::expr::{Expr, Matcher};
use crate::fleet::view::Node;

/// The affinity filter.
#[derive(Debug)]
pub struct Affinity;

/// Whether `node` has something `expr`'s value matches.
fn has(expr: &Expr, node: &Node) -> bool {
    match (expr.key.as_str(), &expr.value) {
        ("container", Matcher::Plain(name, _)) => node.container(name).is_some(),
        ("container", _) => node
            .containers()
            .iter()
            .any(|c| expr.matches_value(&c.name)),
        ("image", Matcher::Plain(name, _)) => node.has_image(name),
        (_, Matcher::Plain(_, pair)) => node.has_container_label(pair),
        ("image", _) => node
            .images
            .iter()
            .flat_map(|i| i.tags.iter())
            .any(|t| expr.matches_value(t)),
        (label, _) => node
            .containers()
            .iter()
            .filter_map(|c| c.labels.get(label))
            .any(|v| expr.matches_value(v)),
    }
}

/// Whether a node holds to `expr`.
fn holds(expr: &Expr) -> impl Fn(&Node) -> bool + '_ {
    move |n: &Node| has(expr, n) == expr.equal
}

fn why(expr: &Expr, _: &Node) -> String {
    let what = match expr.key.as_str() {
        "container" | "image" => format!("{} {}", expr.key, value_text(expr)),
        label => format!("a container labelled {label}={}", value_text(expr)),
    };
    match expr.equal {
        true => format!("it has no {what} (wanted {expr})"),
        false => format!("it has a {what} (wanted {expr})"),
    }
}

fn value_text(expr: &Expr) -> String {
    match &expr.value {
        Matcher::Plain(v, _) => v.clone(),
        Matcher::Pattern(re) => format!("matching {re}"),
    }
}

impl Filter for Affinity {
    fn name(&self) -> &'static str {
        "affinity"
    }

    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        expression_tests(&ask.affinities, holds)
    }

    fn filter<'v>(
        &self,
        ask: &Ask,
        _: &[&'v Node],
        nodes: Vec<&'v Node>,
        explain: bool,
    ) -> Outcome<'v> {
        by_expressions("affinity", &ask.affinities, nodes, explain, holds, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{container, ids, node};
    use crate::fleet::view::Image;

    fn run<'v>(exprs: &[&str], all: &[&'v Node]) -> Outcome<'v> {
        let ask = Ask {
            affinities: exprs.iter().map(|t| Expr::parse(t).unwrap()).collect(),
            ..Ask::default()
        };
        Affinity.filter(&ask, all, all.to_vec(), true)
    }

    #[test]
    fn containers_images_and_labels_draw_or_repel() {
        let mut a = node("a");
        let mut web = container("web", "f00d1234");
        web.labels.insert("tier".into(), "front".into());
        a.put_container(web);
        let mut b = node("b");
        b.images.push(Image {
            id: "sha256:beef".into(),
            tags: vec!["redis:7".into()],
            ..Default::default()
        });
        let all = [&a, &b];
        assert_eq!(ids(&run(&["container==web"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["container==f00d"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["container==w*"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["container!=web"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["image==redis:7"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["image==redis*"], &all).kept), ["b"]);
        assert_eq!(ids(&run(&["tier==front"], &all).kept), ["a"]);
        assert_eq!(ids(&run(&["tier!=front"], &all).kept), ["b"]);
        let none = run(&["image==postgres"], &all);
        assert!(none.kept.is_empty());
        assert_eq!(
            none.ruled_out[0].1,
            "it has no image postgres (wanted image==postgres)"
        );
        let soft = run(&["image==~postgres"], &all);
        assert_eq!(soft.kept.len(), 2);
        assert_eq!(soft.notes.len(), 1);
    }
}
