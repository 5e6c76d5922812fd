//! Who may do what: the roles a caller can hold, what each call of the
//! control-plane API is as an [`Action`], and the one table that says
//! which role may take which action. The front asks [`decide`] once per
//! call, before anything is sent to a node.
//!
//! Pure and small: nothing here reads a key, a request or the clock, and
//! nothing here knows where a node is. The table is the documentation:
//! the README's table is [`markdown_table`]'s output, checked by a test.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a caller may do, attached to each API key and client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, join tokens and credentials included.
    Admin,
    /// Every Docker call on the nodes in scope, and `/fleet` writes.
    Operator,
    /// Reads that hand out no container's files and no shell.
    Viewer,
    /// Join tokens, and nothing else.
    Enroller,
}

impl Role {
    /// Every role, most able first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Enroller];

    /// The role of a key or certificate made before roles existed.
    pub const BEFORE_ROLES: Role = Role::Operator;

    /// Its name, as `--role` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Viewer => "viewer",
            Self::Enroller => "enroller",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of the roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: the roles are admin, operator, viewer and enroller")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// What a Docker call does, as far as who may make it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DockerCall {
    /// `GET`/`HEAD` that hands out no files and no shell.
    Read,
    /// Anything that may change the node.
    Write,
    /// Creating or starting an exec instance: a shell on the host's
    /// container.
    Exec,
    /// Attaching to a container's streams.
    Attach,
    /// Reading a container's files (`export`, `archive`).
    Files,
}

/// One thing a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A Docker call to one node (`/nodes/<id>/...`).
    Docker(DockerCall),
    /// A Docker call to the fleet (`/fleet/...`).
    Fleet(DockerCall),
    /// `GET /v1/nodes[/<id>]`.
    NodeList,
    /// `GET /v1/events`.
    Events,
    /// `POST /v1/tokens`: a join token.
    Tokens,
    /// `/v1/keys`: making, listing and revoking API keys.
    Keys,
    /// `GET /v1/whoami`: the caller's own role and scope.
    Whoami,
}

impl Action {
    /// What it is, in the words a refusal uses.
    pub fn describe(self) -> &'static str {
        use DockerCall::*;
        match self {
            Self::Docker(Read) => "read from a node's Docker API",
            Self::Docker(Write) => "change a node through its Docker API",
            Self::Docker(Exec) => "run exec in a node's containers",
            Self::Docker(Attach) => "attach to a node's containers",
            Self::Docker(Files) => "copy files out of a node's containers",
            Self::Fleet(Read) => "read from the fleet",
            Self::Fleet(Write) => "change the fleet (run, create, remove, pull)",
            Self::Fleet(Exec) => "run exec in the fleet's containers",
            Self::Fleet(Attach) => "attach to the fleet's containers",
            Self::Fleet(Files) => "copy files out of the fleet's containers",
            Self::NodeList => "list nodes",
            Self::Events => "follow events",
            Self::Tokens => "make join tokens",
            Self::Keys => "make, list or revoke API keys",
            Self::Whoami => "see its own role",
        }
    }
}

use DockerCall::{Attach, Exec, Files, Read, Write};
use Role::{Admin, Enroller, Operator, Viewer};

/// Which roles may take each action. The only place this is said.
pub const TABLE: &[(Action, &[Role])] = &[
    (Action::Docker(Read), &[Admin, Operator, Viewer]),
    (Action::Docker(Write), &[Admin, Operator]),
    (Action::Docker(Exec), &[Admin, Operator]),
    (Action::Docker(Attach), &[Admin, Operator]),
    (Action::Docker(Files), &[Admin, Operator]),
    (Action::Fleet(Read), &[Admin, Operator, Viewer]),
    (Action::Fleet(Write), &[Admin, Operator]),
    (Action::Fleet(Exec), &[Admin, Operator]),
    (Action::Fleet(Attach), &[Admin, Operator]),
    (Action::Fleet(Files), &[Admin, Operator]),
    (Action::NodeList, &[Admin, Operator, Viewer]),
    (Action::Events, &[Admin, Operator, Viewer]),
    (Action::Tokens, &[Admin, Enroller]),
    (Action::Keys, &[Admin]),
    (Action::Whoami, &[Admin, Operator, Viewer, Enroller]),
];

/// The roles that may take `action`.
pub fn allowed(action: Action) -> &'static [Role] {
    TABLE
        .iter()
        .find(|(a, _)| *a == action)
        .map_or(&[], |(_, roles)| roles)
}

/// A call its caller's role does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{who} has the role {role}, which may not {what}; that takes the role {needs}. An admin of \
     the tenant can make a key with it: tunnelgate-relay api-key create --role {first}"
)]
pub struct Denied {
    /// The caller, as the audit line names it.
    pub who: String,
    /// Its role.
    pub role: Role,
    /// What it tried.
    pub what: &'static str,
    /// The roles that may, as words.
    pub needs: String,
    /// The least able of them, for the hint.
    pub first: Role,
}

/// Whether `role` may take `action`; `who` names the caller in a refusal.
pub fn decide(who: &dyn fmt::Display, role: Role, action: Action) -> Result<(), Denied> {
    let roles = allowed(action);
    if roles.contains(&role) {
        return Ok(());
    }
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    Err(Denied {
        who: who.to_string(),
        role,
        what: action.describe(),
        needs: match names.split_last() {
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => "no role".to_owned(),
        },
        first: roles.last().copied().unwrap_or(Admin),
    })
}

/// What a Docker call (`method`, its path without the node, with or
/// without an API version) does.
pub fn docker_call(method: &http::Method, path: &str) -> DockerCall {
    // The daemon routes the decoded path: `%61rchive` is `archive` to it.
    let decoded = percent_decoded(path);
    let (_, path) = tunnelgate_proto::docker_api::split_version(&decoded);
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = method == http::Method::GET || method == http::Method::HEAD;
    match (method.as_str(), segments.as_slice()) {
        // A container's files, from whichever name form the fleet takes.
        ("GET", ["containers", .., "export" | "archive"]) => Files,
        (_, ["containers", .., "attach"]) | (_, ["containers", .., "attach", "ws"]) => Attach,
        ("POST", ["containers", .., "exec"]) => Exec,
        ("POST", ["exec", _, "start" | "resize"]) => Exec,
        _ if read => Read,
        _ => Write,
    }
}

/// `path` with its `%XX` escapes decoded, as the daemon's router sees it.
fn percent_decoded(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The table as the README shows it.
pub fn markdown_table() -> String {
    let mut out = String::from("| What | admin | operator | viewer | enroller |\n");
    out.push_str("|---|:-:|:-:|:-:|:-:|\n");
    for (action, roles) in TABLE {
        out.push_str(&format!("| {} |", action.describe()));
        for role in Role::ALL {
            out.push_str(match roles.contains(&role) {
                true => " yes |",
                false => " — |",
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn docker_calls_are_classed_by_what_they_hand_out() {
        let get = |p: &str| docker_call(&Method::GET, p);
        let post = |p: &str| docker_call(&Method::POST, p);
        assert_eq!(get("/v1.41/containers/json"), Read);
        assert_eq!(get("/containers/web/logs"), Read);
        assert_eq!(docker_call(&Method::HEAD, "/containers/web/archive"), Read);
        assert_eq!(get("/v1.41/containers/web/archive"), Files);
        assert_eq!(get("/containers/web/export"), Files);
        assert_eq!(
            get("/containers/n1/web/export"),
            Files,
            "the fleet's node/name"
        );
        assert_eq!(post("/v1.41/containers/web/exec"), Exec);
        assert_eq!(post("/exec/abc/start"), Exec);
        assert_eq!(get("/exec/abc/json"), Read);
        assert_eq!(post("/containers/web/attach"), Attach);
        assert_eq!(get("/containers/web/attach/ws"), Attach);
        assert_eq!(post("/containers/create"), Write);
        assert_eq!(docker_call(&Method::PUT, "/containers/web/archive"), Write);
        assert_eq!(docker_call(&Method::DELETE, "/images/busybox"), Write);
        assert_eq!(post("/v1.41/containers/web/wait"), Write);
        // Spelled with escapes, a path is what the daemon decodes it to.
        assert_eq!(get("/containers/web/%61rchive"), Files);
        assert_eq!(get("/containers/web/%65%78port"), Files);
        assert_eq!(get("/containers/web/att%61ch/ws"), Attach);
        assert_eq!(get("/containers/web/logs%"), Read);
        // The daemon takes `/v1/` as a version too.
        assert_eq!(get("/v1/containers/web/archive"), Files);
    }

    #[test]
    fn every_action_has_a_row_and_admin_may_take_each() {
        let all = [Read, Write, Exec, Attach, Files];
        let actions = all
            .iter()
            .map(|c| Action::Docker(*c))
            .chain(all.iter().map(|c| Action::Fleet(*c)))
            .chain([
                Action::NodeList,
                Action::Events,
                Action::Tokens,
                Action::Keys,
                Action::Whoami,
            ]);
        for action in actions {
            assert!(allowed(action).contains(&Admin), "{action:?}");
        }
    }

    #[test]
    fn a_refusal_names_the_role_what_it_lacks_and_who_can_grant_it() {
        let e = decide(&"api-key:abc", Viewer, Action::Docker(Exec)).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("api-key:abc has the role viewer"), "{text}");
        assert!(text.contains("may not run exec"), "{text}");
        assert!(text.contains("admin or operator"), "{text}");
        assert!(text.contains("--role operator"), "{text}");
        assert!(decide(&"x", Enroller, Action::Docker(Read)).is_err());
        assert!(decide(&"x", Enroller, Action::Tokens).is_ok());
        assert!(decide(&"x", Operator, Action::Tokens).is_err());
        assert!(decide(&"x", Viewer, Action::Fleet(Read)).is_ok());
        assert!(decide(&"x", Viewer, Action::Fleet(Write)).is_err());
    }

    #[test]
    fn roles_parse_by_name_and_an_unknown_one_lists_the_roles() {
        assert_eq!("viewer".parse::<Role>(), Ok(Viewer));
        let e = "root".parse::<Role>().unwrap_err().to_string();
        assert!(e.contains("admin, operator, viewer and enroller"), "{e}");
    }

    #[test]
    fn the_readme_shows_the_table_as_the_code_has_it() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's role table differs from the code's; put this in it:\n{}",
            markdown_table()
        );
    }
}
