//! The join-token format shared by relay (which mints tokens) and agent
//! (which presents them): `tgjoin1.<ca-sha256-hex>.<id>.<secret>`.
//!
//! The fingerprint lets a new agent trust the relay's CA on first contact,
//! as kubeadm's discovery hash does; the secret proves it may enrol.

use std::fmt;
use std::str::FromStr;

/// The prefix naming the format's version.
pub const PREFIX: &str = "tgjoin1";

/// A join token's text is not of the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the join token is malformed; copy the whole last line printed by `tunnelgate-relay token create`")]
pub struct MalformedToken;

/// A parsed join token. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the installation's CA certificate.
    pub ca_fingerprint: [u8; 32],
    /// The token's public id, safe to log.
    pub id: String,
    /// The secret part.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl FromStr for JoinToken {
    type Err = MalformedToken;

    fn from_str(s: &str) -> Result<Self, MalformedToken> {
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(fp), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(MalformedToken);
        };
        if fp.len() != 64 || id.is_empty() || secret.len() < 16 {
            return Err(MalformedToken);
        }
        let safe = |p: &str| p.bytes().all(|b| b.is_ascii_alphanumeric());
        if !safe(id) || !safe(secret) {
            return Err(MalformedToken);
        }
        let mut ca_fingerprint = [0u8; 32];
        for (i, pair) in fp.as_bytes().chunks(2).enumerate() {
            let hi = hex_nibble(pair[0]).ok_or(MalformedToken)?;
            let lo = hex_nibble(pair[1]).ok_or(MalformedToken)?;
            ca_fingerprint[i] = hi << 4 | lo;
        }
        Ok(Self {
            ca_fingerprint,
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}.")?;
        for b in self.ca_fingerprint {
            write!(f, "{b:02x}")?;
        }
        write!(f, ".{}.{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "tgjoin1",
            "tgjoin2.aa.b.c",
            "tgjoin1.zz.id.0123456789abcdef",
            "tgjoin1.aa.id.short",
        ] {
            assert_eq!(bad.parse::<JoinToken>(), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = JoinToken {
            ca_fingerprint: [7; 32],
            id: "ab12".into(),
            secret: "0123456789abcdef0123".into(),
        };
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }

    proptest! {
        #[test]
        fn round_trips(fp in any::<[u8; 32]>(), id in "[a-z0-9]{1,12}", secret in "[a-z0-9]{16,40}") {
            let t = JoinToken { ca_fingerprint: fp, id, secret };
            prop_assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t));
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = s.parse::<JoinToken>();
        }
    }
}
