//! Identifier newtypes, so a node id is never confused with a request id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest node id accepted, in bytes.
pub const MAX_NODE_ID_LEN: usize = 63;

/// A node's identity within an installation: DNS-label-like, so it is safe
/// in URL paths, certificate names and file names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a valid [`NodeId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNodeId {
    /// The id is empty.
    #[error("node id is empty")]
    Empty,
    /// The id is longer than [`MAX_NODE_ID_LEN`].
    #[error("node id is {0} bytes long; at most {MAX_NODE_ID_LEN} are allowed")]
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9._-]` or starts with `.`/`-`.
    #[error("node id {0:?} may only hold letters, digits, '.', '_' and '-', and must start with a letter or digit")]
    BadCharacter(String),
}

impl NodeId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidNodeId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidNodeId::Empty);
        }
        if id.len() > MAX_NODE_ID_LEN {
            return Err(InvalidNodeId::TooLong(id.len()));
        }
        let first_ok = id.as_bytes()[0].is_ascii_alphanumeric();
        let rest_ok = id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !first_ok || !rest_ok {
            return Err(InvalidNodeId::BadCharacter(id));
        }
        Ok(Self(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeId {
    type Error = InvalidNodeId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
        assert_eq!(NodeId::new(""), Err(InvalidNodeId::Empty));
        assert!(matches!(
            NodeId::new("a/b"),
            Err(InvalidNodeId::BadCharacter(_))
        ));
        assert!(matches!(
            NodeId::new("..x"),
            Err(InvalidNodeId::BadCharacter(_))
        ));
        assert_eq!(NodeId::new("a".repeat(64)), Err(InvalidNodeId::TooLong(64)));
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
