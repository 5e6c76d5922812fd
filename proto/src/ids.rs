//! Identifier newtypes, so a node id is never confused with a request id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest node or tenant id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 63;

/// Why a string is not a valid [`NodeId`] or [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id is empty.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// The id is longer than [`MAX_NODE_ID_LEN`].
    #[error("{0} is {1} bytes long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong(&'static str, usize),
    /// The id holds a character outside `[A-Za-z0-9._-]` or starts with `.`/`-`.
    #[error("{0} {1:?} may only hold letters, digits, '.', '_' and '-', and must start with a letter or digit")]
    BadCharacter(&'static str, String),
}

/// The error of [`NodeId::new`].
pub type InvalidNodeId = InvalidId;

/// DNS-label-like: safe in URL paths, certificate names and file names.
fn check(what: &'static str, id: String) -> Result<String, InvalidId> {
    if id.is_empty() {
        return Err(InvalidId::Empty(what));
    }
    if id.len() > MAX_NODE_ID_LEN {
        return Err(InvalidId::TooLong(what, id.len()));
    }
    let first_ok = id.as_bytes()[0].is_ascii_alphanumeric();
    let rest_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok {
        return Err(InvalidId::BadCharacter(what, id));
    }
    Ok(id)
}

macro_rules! label_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `id` and wraps it.
            pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
                check($what, id.into()).map(Self)
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_id!(
    /// A node's identity within its tenant.
    NodeId,
    "node id"
);

label_id!(
    /// The customer (or team) that owns nodes, join tokens and
    /// control-plane credentials. Nobody sees across tenants.
    TenantId,
    "tenant"
);

label_id!(
    /// A relay's stable name: in logs, in the welcome an agent gets, and
    /// (in a cluster) as the key of its membership.
    RelayId,
    "relay id"
);

/// A node as a relay addresses it: node ids are unique within a tenant,
/// so the pair is the key of every per-node table.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeKey {
    /// The owner.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
}

impl NodeKey {
    /// Parses `tenant/node`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (tenant, node) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not of the form TENANT/NODE"))?;
        Ok(Self {
            tenant: TenantId::new(tenant).map_err(|e| e.to_string())?,
            node_id: NodeId::new(node).map_err(|e| e.to_string())?,
        })
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.node_id)
    }
}

impl TenantId {
    /// The tenant of single-tenant installs and the quickstart.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

/// Identifies one control-plane call from the relay's front door to the
/// agent and back; it is logged on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked() {
        assert!(NodeId::new("web-01.eu").is_ok());
        assert_eq!(NodeId::new(""), Err(InvalidId::Empty("node id")));
        assert!(matches!(
            NodeId::new("a/b"),
            Err(InvalidId::BadCharacter(..))
        ));
        assert!(matches!(
            NodeId::new("..x"),
            Err(InvalidId::BadCharacter(..))
        ));
        assert_eq!(
            NodeId::new("a".repeat(64)),
            Err(InvalidId::TooLong("node id", 64))
        );
        assert!(TenantId::new("acme").is_ok() && TenantId::new("a/b").is_err());
        assert!(RelayId::new("relay-0a1b").is_ok() && RelayId::new("").is_err());
    }

    #[test]
    fn node_keys_parse_tenant_slash_node() {
        let key = NodeKey::parse("acme/web-1").unwrap();
        assert_eq!(
            (key.tenant.as_str(), key.node_id.as_str()),
            ("acme", "web-1")
        );
        assert_eq!(key.to_string(), "acme/web-1");
        assert!(NodeKey::parse("web-1").unwrap_err().contains("TENANT/NODE"));
        assert!(NodeKey::parse("acme/../x").is_err());
    }

    #[test]
    fn node_id_deserialization_validates() {
        assert!(serde_json::from_str::<NodeId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<NodeId>("\"../etc\"").is_err());
    }

    #[test]
    fn request_id_displays_as_fixed_width_hex() {
        assert_eq!(RequestId(255).to_string(), "00000000000000ff");
    }
}
