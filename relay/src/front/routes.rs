//! What a request names, parsed once into typed ids — by its path, or,
//! under the node domain, by its host name — and the check that no
//! spelling of a path can leave the node it names.

use tunnelgate_proto::NodeId;

use crate::config::{strip_port, ByHost, NodeDomain};
use crate::error::CallError;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/nodes`.
    NodeList,
    /// `GET /v1/nodes/<id>`; `Err` holds a segment that is no node id.
    NodeInfo(Result<NodeId, String>),
    /// `/nodes/<id>/<docker path>`, with the Docker path as the daemon
    /// sees it.
    Docker {
        /// The node; `Err` holds a segment that is no node id.
        node: Result<NodeId, String>,
        /// The rest of the path, from its `/`.
        rest: String,
        /// Whether the call's host named the node (so its answers'
        /// `Location`s need no `/nodes/<id>` prefix).
        by_host: bool,
    },
    /// `GET /v1/events`: the Docker and node events of every node.
    Events,
    /// `POST /v1/tokens`: a join token of the caller's tenant.
    Tokens,
    /// `/v1/keys`: the tenant's API keys (`GET`, `POST`).
    Keys,
    /// `/v1/keys/<id>`: one API key (`DELETE` revokes it).
    Key(String),
    /// `GET /v1/whoami`: the caller's tenant, principal and role.
    Whoami,
    /// `/fleet/<docker path>`: one Docker host over every
    /// node.
    Fleet {
        /// The rest of the path, from its `/`.
        rest: String,
    },
    /// Anything else.
    NotFound,
}

impl Route {
    /// What a call names: under the node domain, its host's node (with
    /// the path as sent) or the fleet; else what its path names.
    pub fn of(by_host: Option<ByHost>, path: &str) -> Self {
        match by_host {
            Some(ByHost::Node(node)) => Self::Docker {
                node,
                rest: path.to_owned(),
                by_host: true,
            },
            Some(ByHost::Fleet) => Self::Fleet {
                rest: path.to_owned(),
            },
            None => Self::parse(path),
        }
    }

    /// Parses a request path.
    pub fn parse(path: &str) -> Self {
        let node = |id: &str| NodeId::new(id).map_err(|_| id.to_owned());
        if path == "/v1/nodes" || path == "/v1/nodes/" {
            return Self::NodeList;
        }
        if path == "/v1/events" {
            return Self::Events;
        }
        if path == "/v1/tokens" {
            return Self::Tokens;
        }
        if path == "/v1/keys" {
            return Self::Keys;
        }
        if let Some(id) = path.strip_prefix("/v1/keys/") {
            return Self::Key(id.to_owned());
        }
        if path == "/v1/whoami" {
            return Self::Whoami;
        }
        if path == "/fleet" {
            return Self::Fleet { rest: "/".into() };
        }
        if let Some(rest) = path.strip_prefix("/fleet/") {
            return Self::Fleet {
                rest: format!("/{rest}"),
            };
        }
        if let Some(id) = path.strip_prefix("/v1/nodes/") {
            return Self::NodeInfo(node(id));
        }
        if let Some(after) = path.strip_prefix("/nodes/") {
            let (id, rest) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, "/"),
            };
            return Self::Docker {
                node: node(id),
                rest: rest.to_owned(),
                by_host: false,
            };
        }
        Self::NotFound
    }

    /// The node a Docker call names, for the audit line.
    pub fn docker_node(&self) -> Option<&NodeId> {
        match self {
            Self::Docker { node: Ok(n), .. } => Some(n),
            _ => None,
        }
    }
}

/// What a call's `host` (its `Host` header) and, over TLS, its
/// `server_name` (SNI) name under `domain`. When either names an endpoint
/// under it, the two must agree: a connection made for one node never
/// carries another's calls.
pub fn by_host(
    domain: &NodeDomain,
    host: Option<&str>,
    server_name: Option<&str>,
) -> Result<Option<ByHost>, CallError> {
    let named = host.and_then(|h| domain.names(h));
    let by_sni = server_name.and_then(|s| domain.names(s));
    if let (Some(h), Some(s)) = (host, server_name) {
        if (named.is_some() || by_sni.is_some()) && !strip_port(h).eq_ignore_ascii_case(s) {
            return Err(CallError::Misdirected {
                server_name: s.to_owned(),
                host: h.to_owned(),
            });
        }
    }
    Ok(named.or(by_sni))
}

/// The `key=value` pairs of a query string, as sent (still
/// percent-encoded); a pair without `=` has an empty value.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Refuses paths that could mean something else after normalisation:
/// dot-segments, encoded slashes, backslashes and NULs, plain or
/// percent-encoded. No Docker API path needs them, and refusing them
/// means no spelling of a path can leave the node it names.
pub fn check_path(path: &str) -> Result<(), CallError> {
    let lower = path.to_ascii_lowercase();
    let encoded_separator = ["%2f", "%5c", "%00", "\\"]
        .iter()
        .any(|bad| lower.contains(bad));
    let dot_segment = lower.split('/').any(|seg| {
        let decoded = seg.replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    match encoded_separator || dot_segment {
        true => Err(CallError::UnsafePath),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_routes_with_its_path_as_sent_and_must_match_the_tls_name() {
        let d = NodeDomain::parse("nodes.test").unwrap();
        let route = |host, sni| by_host(&d, host, sni).map(|b| Route::of(b, "/v1.41/_ping"));
        assert_eq!(
            route(Some("web-1.nodes.test:7375"), None).unwrap(),
            Route::Docker {
                node: id("web-1"),
                rest: "/v1.41/_ping".into(),
                by_host: true
            }
        );
        assert_eq!(
            route(Some("fleet.nodes.test"), Some("fleet.nodes.test")).unwrap(),
            Route::Fleet {
                rest: "/v1.41/_ping".into()
            }
        );
        // Another host keeps the path's routing.
        assert_eq!(
            route(Some("relay:7375"), Some("relay")).unwrap(),
            Route::NotFound
        );
        for (host, sni) in [
            ("web-2.nodes.test", "web-1.nodes.test"),
            ("web-1.nodes.test", "relay.example.com"),
            ("relay.example.com", "web-1.nodes.test"),
        ] {
            let refused = route(Some(host), Some(sni)).unwrap_err();
            assert_eq!(
                refused.status(),
                http::StatusCode::MISDIRECTED_REQUEST,
                "{host} {sni}"
            );
        }
        // Without a Host (HTTP/1.0), the TLS name decides.
        assert_eq!(
            route(None, Some("web-1.nodes.test")).unwrap(),
            Route::Docker {
                node: id("web-1"),
                rest: "/v1.41/_ping".into(),
                by_host: true
            }
        );
    }

    fn id(s: &str) -> Result<NodeId, String> {
        Ok(NodeId::new(s).unwrap())
    }

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/v1/nodes"), Route::NodeList);
        assert_eq!(Route::parse("/v1/nodes/a"), Route::NodeInfo(id("a")));
        assert_eq!(
            Route::parse("/v1/nodes/a%20b"),
            Route::NodeInfo(Err("a%20b".into()))
        );
        let docker = |node, rest: &str| Route::Docker {
            node,
            rest: rest.into(),
            by_host: false,
        };
        assert_eq!(
            Route::parse("/nodes/a/v1.45/containers/json"),
            docker(id("a"), "/v1.45/containers/json")
        );
        assert_eq!(Route::parse("/nodes/a"), docker(id("a"), "/"));
        assert_eq!(Route::parse("/nodes/a//x"), docker(id("a"), "//x"));
        assert_eq!(
            Route::parse("/nodes/-x/_ping"),
            docker(Err("-x".into()), "/_ping")
        );
        assert_eq!(Route::parse("/containers/json"), Route::NotFound);
    }

    #[test]
    fn paths_that_could_leave_their_node_are_refused() {
        for bad in [
            "/nodes/a/../b/_ping",
            "/nodes/a/%2e%2e/b/_ping",
            "/nodes/a/%2E./b",
            "/nodes/a%2fb/_ping",
            "/nodes/a/x%2F..%2Fb",
            "/nodes/a/./_ping",
            "/nodes/a\\..\\b",
            "/nodes/a/%00",
        ] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
        for good in [
            "/nodes/a/_ping",
            "/nodes/a/v1.45/images/library/busybox:1.36/json",
            "/nodes/a/v1.45/containers/my..name/json",
            "/v1/nodes",
        ] {
            assert!(check_path(good).is_ok(), "{good}");
        }
    }
}
