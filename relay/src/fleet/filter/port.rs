//! Host ports: a port a container binds on the host (a binding with a
//! host port, or an exposed port with host networking) is taken once per
//! node, by whichever running container holds it.

use super::{Filter, NodeTest, Outcome};
use crate::fleet::ask::Ask;
use crate::fleet::view::Node;

/// The port filter.
#[derive(Debug)]
pub struct Port;

impl Filter for Port {
    fn name(&self) -> &'static str {
        "port"
    }

    fn tests<'a>(&self, ask: &'a Ask) -> Option<Vec<NodeTest<'a>>> {
        Some(match ask.host_ports.is_empty() {
            true => Vec::new(),
            false => vec![Box::new(|n: &Node| {
                ask.host_ports.iter().all(|p| n.port_holder(p).is_none())
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
        if !ask.host_ports.is_empty() {
            nodes.retain(|&node| {
                let taken = ask
                    .host_ports
                    .iter()
                    .find_map(|want| node.port_holder(want).map(|by| (want, by)));
                match taken {
                    Some((want, by)) => {
                        out.rule_out(node, || {
                            format!("host port {want} is taken by container {by}")
                        });
                        false
                    }
                    None => true,
                }
            });
        }
        out.kept = nodes;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::filter::fake::{container, ids, node};
    use crate::fleet::view::HostPort;

    #[test]
    fn a_host_port_is_taken_once_per_node_by_running_containers() {
        let port = |port| HostPort {
            ip: String::new(),
            port,
            proto: "tcp".into(),
        };
        let mut a = node("a");
        let mut web = container("web", "a1");
        web.host_ports.push(port(8080));
        a.put_container(web);
        let mut b = node("b");
        let mut old = container("old", "b1");
        old.host_ports.push(port(8080));
        old.running = false;
        b.put_container(old);
        let all = [&a, &b];
        let ask = Ask {
            host_ports: vec![port(8080)],
            ..Ask::default()
        };
        let out = Port.filter(&ask, &all, all.to_vec(), true);
        assert_eq!(ids(&out.kept), ["b"], "a stopped container holds no port");
        assert_eq!(
            out.ruled_out[0].1,
            "host port 8080/tcp is taken by container web"
        );
        let other = Ask {
            host_ports: vec![port(9090)],
            ..Ask::default()
        };
        assert_eq!(
            ids(&Port.filter(&other, &all, all.to_vec(), true).kept),
            ["a", "b"]
        );
    }
}
