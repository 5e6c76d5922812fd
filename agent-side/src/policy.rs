//! What the relay may ask of this host's Docker daemon, decided here on the
//! host, so a compromised relay cannot exceed it.
//!
//! `full` (the default) forwards every call. Any other policy makes the
//! agent read each HTTP request on a stream, check its method and path
//! (the `/v1.NN` version prefix stripped) against the allow-list, and
//! answer a refusal itself with a Docker-style 403 that names the policy,
//! so `docker run` prints why. Requests that upgrade the connection
//! (attach, exec) are allowed only by a rule that says `upgrade = true`.
//!
//! A policy file (TOML):
//!
//! ```toml
//! name = "ops"
//! [[allow]]
//! methods = ["GET", "HEAD"]
//! path = "/**"
//! [[allow]]
//! methods = ["POST"]
//! path = "/containers/*/restart"
//! ```
//!
//! In paths, `*` matches one segment and a trailing `/**` any rest.

use std::path::Path;

use serde::Deserialize;

/// A named allow-list, or no restriction at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Shown in refusals and logs.
    pub name: String,
    /// `None`: everything is allowed.
    rules: Option<Vec<Rule>>,
}

/// One allowed method set on one path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Upper-case HTTP methods, or `["*"]`.
    pub methods: Vec<String>,
    /// Path pattern without the API version prefix.
    pub path: String,
    /// Whether matching requests may upgrade to a raw stream (attach, exec).
    #[serde(default)]
    pub upgrade: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    allow: Vec<Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        Self::full()
    }
}

impl Policy {
    /// Everything is forwarded.
    pub fn full() -> Self {
        Self {
            name: "full".into(),
            rules: None,
        }
    }

    /// Reads only: `GET` and `HEAD` on any path, no upgrades (so no attach,
    /// no exec), and nothing that creates, changes or removes.
    pub fn read_only() -> Self {
        Self {
            name: "read-only".into(),
            rules: Some(vec![Rule {
                methods: vec!["GET".into(), "HEAD".into()],
                path: "/**".into(),
                upgrade: false,
            }]),
        }
    }

    /// A built-in profile by name (`full`, `read-only`), or a TOML file.
    pub fn load(spec: &str) -> Result<Self, String> {
        match spec {
            "full" => Ok(Self::full()),
            "read-only" | "readonly" => Ok(Self::read_only()),
            path => {
                let text = std::fs::read_to_string(Path::new(path)).map_err(|e| {
                    format!("{path:?} is neither a built-in policy (full, read-only) nor a readable file: {e}")
                })?;
                let file: PolicyFile =
                    toml::from_str(&text).map_err(|e| format!("policy file {path}: {e}"))?;
                Ok(Self {
                    name: file.name,
                    rules: Some(file.allow),
                })
            }
        }
    }

    /// Whether every call is forwarded unread.
    pub fn is_full(&self) -> bool {
        self.rules.is_none()
    }

    /// Checks one request; the error is the sentence the caller sees.
    pub fn check(&self, method: &str, path: &str, upgrade: bool) -> Result<(), String> {
        let Some(rules) = &self.rules else {
            return Ok(());
        };
        let path = strip_version(path);
        // Docker's router would clean these up into some other path.
        if path.contains('%') || path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!(
                "refused by the agent's policy {:?} on this node: the path {path} has dot-segments or escapes",
                self.name
            ));
        }
        let allowed = rules.iter().any(|r| {
            (r.upgrade || !upgrade)
                && r.methods.iter().any(|m| m == "*" || m == method)
                && matches(&r.path, path)
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "refused by the agent's policy {:?} on this node: {method} {path}{} is not allowed; \
                 the host's operator sets the policy with tunnelgate-agent --policy",
                self.name,
                if upgrade { " with a connection upgrade" } else { "" }
            ))
        }
    }
}

/// `/v1.45/containers/json` → `/containers/json`.
fn strip_version(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let version = &rest[..end];
    if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        &rest[end..]
    } else {
        path
    }
}

fn matches(pattern: &str, path: &str) -> bool {
    let mut pat = pattern.split('/').filter(|s| !s.is_empty());
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    loop {
        match (pat.next(), segs.next()) {
            (Some("**"), _) => return true,
            (None, None) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_allows_reads_and_refuses_changes_and_upgrades() {
        let p = Policy::read_only();
        assert!(p.check("GET", "/v1.45/containers/json", false).is_ok());
        assert!(p.check("HEAD", "/_ping", false).is_ok());
        let err = p
            .check("POST", "/v1.45/containers/create", false)
            .unwrap_err();
        assert!(
            err.contains("\"read-only\"") && err.contains("POST /containers/create"),
            "{err}"
        );
        assert!(p.check("GET", "/containers/x/attach/ws", true).is_err());
        assert!(p.check("DELETE", "/containers/x", false).is_err());
        assert!(p.check("GET", "/containers/../x", false).is_err());
        assert!(p.check("GET", "/containers/%2e%2e/x", false).is_err());
        assert!(Policy::full()
            .check("POST", "/containers/create", false)
            .is_ok());
    }

    #[test]
    fn policy_files_match_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "name = \"ops\"\n[[allow]]\nmethods = [\"POST\"]\npath = \"/containers/*/restart\"\n\
             [[allow]]\nmethods = [\"*\"]\npath = \"/exec/**\"\nupgrade = true\n",
        )
        .unwrap();
        let p = Policy::load(path.to_str().unwrap()).unwrap();
        assert_eq!(p.name, "ops");
        assert!(p
            .check("POST", "/v1.45/containers/web/restart", false)
            .is_ok());
        assert!(p.check("POST", "/containers/web/kill", false).is_err());
        assert!(p.check("POST", "/containers/a/b/restart", false).is_err());
        assert!(p.check("POST", "/exec/abc/start", true).is_ok());
        assert!(p.check("GET", "/containers/json", false).is_err());
        assert!(Policy::load("no-such-profile").is_err());
        assert_eq!(strip_version("/v1.45"), "");
        assert_eq!(strip_version("/volumes"), "/volumes");
    }
}
