//! Protocol versions: a major that must match and a minor that may differ.
//!
//! Peers with the same major interoperate whatever their minors: a newer
//! minor only adds fields and message types, which older peers skip.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A `major.minor` protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    /// Incompatible changes bump this.
    pub major: u16,
    /// Compatible additions bump this.
    pub minor: u16,
}

impl ProtocolVersion {
    /// The version this build speaks.
    pub const CURRENT: Self = Self { major: 1, minor: 0 };

    /// Checks that a peer speaking `theirs` can talk to us (`self`).
    pub fn check_compatible(self, theirs: Self) -> Result<(), IncompatibleVersion> {
        if self.major == theirs.major {
            Ok(())
        } else {
            Err(IncompatibleVersion { ours: self, theirs })
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A peer speaks a different major version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("peer speaks protocol {theirs}, this side speaks {ours}; upgrade the older of the two")]
pub struct IncompatibleVersion {
    /// Our version.
    pub ours: ProtocolVersion,
    /// The peer's version.
    pub theirs: ProtocolVersion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_differences_are_compatible() {
        let newer = ProtocolVersion { major: 1, minor: 7 };
        assert!(ProtocolVersion::CURRENT.check_compatible(newer).is_ok());
    }

    #[test]
    fn major_difference_names_both_versions() {
        let err = ProtocolVersion::CURRENT
            .check_compatible(ProtocolVersion { major: 2, minor: 1 })
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("2.1") && text.contains("1.0"), "{text}");
    }
}
