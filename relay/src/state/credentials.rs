//! Join tokens and API keys: tenant-owned secrets stored only as hashes;
//! and control-plane client certificates, recorded by serial (no secret)
//! so that they can be listed and revoked the same way.
//!
//! Both live in a JSON list per kind in the [`Records`] (`join-tokens`,
//! `api-keys`: files in the state dir, or etcd in a cluster) and share one
//! lifecycle: create (the only time the secret is shown), list, revoke,
//! and check. Join tokens also expire and may be limited to a number of
//! uses; every enrolment spends one, but not the same node asking again
//! with the same key after losing its answer. Every change is one
//! read-modify-write of the list, so the CLI and the relays never lose
//! each other's update.
//!
//! Texts: a join token is `tgjoin1.<ca-sha256>.<id>.<secret>` (see
//! [`tunnelgate_proto::token`]), an API key `tgkey1.<id>.<secret>`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tunnelgate_proto::{NodeId, TenantId};

use super::nodes::ENROL_RETRY_WINDOW;
use super::records::Records;
use super::{random_hex, rfc3339, unix_now, StateError};
use crate::authz::Role;
use crate::scope::Scope;

/// The prefix of API keys.
pub const API_KEY_PREFIX: &str = "tgkey1";

/// Which kind of secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Lets a new agent enrol.
    JoinToken,
    /// Lets a control-plane client call the API.
    ApiKey,
    /// A control-plane client certificate, by serial.
    ClientCert,
}

impl Kind {
    /// The record the list is kept in.
    pub fn key(self) -> &'static str {
        match self {
            Self::JoinToken => "join-tokens",
            Self::ApiKey => "api-keys",
            Self::ClientCert => "client-certs",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Self::JoinToken => "join token",
            Self::ApiKey => "API key",
            Self::ClientCert => "client certificate",
        }
    }

    fn create_hint(self) -> &'static str {
        match self {
            Self::JoinToken => "tunnelgate-relay token create",
            Self::ApiKey => "tunnelgate-relay api-key create",
            Self::ClientCert => "tunnelgate-relay client-cert create",
        }
    }
}

/// A stored secret; the secret itself is kept only as its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Public id, safe to log.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// An operator's note (e.g. which CI system holds an API key).
    #[serde(default)]
    pub name: Option<String>,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Seconds since the epoch; `None` never expires.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// How many successful uses are allowed; `None` is unlimited.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// Successful uses so far (join tokens only).
    #[serde(default)]
    pub uses: u32,
    /// When an operator revoked it.
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// A join token made for this node only.
    #[serde(default)]
    pub node: Option<NodeId>,
    /// A join token that may enrol its node though it is enrolled
    /// already (moving a node to a new host).
    #[serde(default)]
    pub replace: bool,
    /// A limited join token's enrolments of the last
    /// [`ENROL_RETRY_WINDOW`] seconds, so that an agent whose answer was
    /// lost may ask again with the same key without spending a use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<Spent>,
    /// What an API key or client certificate may do; `None` for one made
    /// before roles, which acts as [`Role::BEFORE_ROLES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// When a relay last took it for a call, to the minute (API keys and
    /// client certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// Which nodes an API key or client certificate may see; the whole
    /// tenant when empty.
    #[serde(default, skip_serializing_if = "Scope::is_all")]
    pub scope: Scope,
    /// For a join token: the labels the node it enrols gets, in place of
    /// its agent's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// One use of a limited join token: which node, for which key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// The node it enrolled.
    pub node: NodeId,
    /// Hex SHA-256 of the public key the relay certified.
    pub key_sha256: String,
    /// Seconds since the epoch.
    pub at: u64,
}

impl Spent {
    fn is_retry(&self, node: &NodeId, key_sha256: &str, now: u64) -> bool {
        self.node == *node
            && self.key_sha256 == key_sha256
            && now.saturating_sub(self.at) < ENROL_RETRY_WINDOW
    }
}

impl Credential {
    /// What it may do.
    pub fn role(&self) -> Role {
        self.role.unwrap_or(Role::BEFORE_ROLES)
    }

    /// `active`, `expired`, `used up` or `revoked`, for `token list`.
    pub fn state(&self, now: u64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else if self.max_uses.is_some_and(|m| self.uses >= m) {
            "used up"
        } else {
            "active"
        }
    }
}

/// Why a presented secret was refused. The messages go back to the
/// presenter, so they say what to do and never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not of the expected form.
    #[error("the {0} is malformed; copy the whole line printed by `{1}`")]
    Malformed(&'static str, &'static str),
    /// A join token made for another installation's CA.
    #[error("the join token was made by another relay installation (its CA fingerprint differs)")]
    WrongInstallation,
    /// No such id, or the secret does not match.
    #[error("the {0} is not known to this relay; create one with `{1}`")]
    Unknown(&'static str, &'static str),
    /// Revoked by an operator.
    #[error("the {noun} {id} was revoked at {at}; create a new one with `{hint}`")]
    Revoked {
        /// Which kind.
        noun: &'static str,
        /// Its id.
        id: String,
        /// When.
        at: String,
        /// The create command.
        hint: &'static str,
    },
    /// Past its expiry.
    #[error("the {noun} {id} expired at {at}; create a new one with `{hint}`")]
    Expired {
        /// Which kind.
        noun: &'static str,
        /// Its id.
        id: String,
        /// When.
        at: String,
        /// The create command.
        hint: &'static str,
    },
    /// A join token made for another node.
    #[error("the join token {id} is for node {node} only; create one for this node with `tunnelgate-relay token create --node NODE`")]
    OtherNode {
        /// Its id.
        id: String,
        /// The node it is for.
        node: NodeId,
    },
    /// All its uses are spent.
    #[error(
        "the {noun} {id} is used up (it allowed {uses} use(s)); create a new one with `{hint}`"
    )]
    UsedUp {
        /// Which kind.
        noun: &'static str,
        /// Its id.
        id: String,
        /// How many uses it allowed.
        uses: u32,
        /// The create command.
        hint: &'static str,
    },
}

/// What to create.
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// Owner.
    pub tenant: TenantId,
    /// Lifetime; `None` never expires.
    pub ttl: Option<Duration>,
    /// Allowed uses; `None` is unlimited.
    pub uses: Option<u32>,
    /// Operator's note.
    pub name: Option<String>,
    /// For join tokens: the one node it may enrol.
    pub node: Option<NodeId>,
    /// For join tokens: may enrol its node though it is enrolled already.
    pub replace: bool,
    /// For API keys: what it may do.
    pub role: Option<Role>,
    /// For API keys and client certificates: which nodes it may see.
    pub scope: Scope,
    /// For join tokens: the labels its node gets.
    pub labels: BTreeMap<String, String>,
}

/// The join tokens and API keys of one installation.
#[derive(Debug, Clone)]
pub struct Store {
    records: Records,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Store {
    /// The credentials kept in `records`.
    pub fn new(records: Records) -> Self {
        Self { records }
    }

    /// Every stored credential of `kind`.
    pub async fn list(&self, kind: Kind) -> Result<Vec<Credential>, StateError> {
        Ok(self.records.get(kind.key()).await?.unwrap_or_default())
    }

    /// Stores a new credential and returns it with its secret, the only
    /// time the secret is ever seen.
    pub async fn create(
        &self,
        kind: Kind,
        new: NewCredential,
    ) -> Result<(Credential, String), StateError> {
        let secret = random_hex(16);
        let now = unix_now();
        let credential = Credential {
            id: random_hex(4),
            tenant: new.tenant,
            name: new.name,
            secret_sha256: hash(&secret),
            created_at: now,
            expires_at: new.ttl.map(|d| now + d.as_secs()),
            max_uses: new.uses,
            uses: 0,
            revoked_at: None,
            node: new.node,
            replace: new.replace,
            recent: Vec::new(),
            role: new.role,
            last_used_at: None,
            scope: new.scope,
            labels: new.labels,
        };
        let stored = credential.clone();
        self.records
            .update(kind.key(), move |list: Option<Vec<Credential>>| {
                let mut list = list.unwrap_or_default();
                // Dead join tokens are useless; drop those a week past their end.
                list.retain(|c| c.expires_at.is_none_or(|t| t + 7 * 24 * 3600 > now));
                list.push(stored.clone());
                Ok((Some(list), ()))
            })
            .await?;
        Ok((credential, secret))
    }

    /// Records a client certificate issued for `tenant`, by its serial.
    pub async fn record_client_cert(
        &self,
        tenant: TenantId,
        serial: String,
        name: String,
        expires_at: u64,
        role: Role,
        scope: Scope,
    ) -> Result<Credential, StateError> {
        let now = unix_now();
        let credential = Credential {
            id: serial,
            tenant,
            name: Some(name),
            secret_sha256: String::new(),
            created_at: now,
            expires_at: Some(expires_at),
            max_uses: None,
            uses: 0,
            revoked_at: None,
            node: None,
            replace: false,
            recent: Vec::new(),
            role: Some(role),
            last_used_at: None,
            scope,
            labels: BTreeMap::new(),
        };
        let stored = credential.clone();
        self.records
            .update(
                Kind::ClientCert.key(),
                move |list: Option<Vec<Credential>>| {
                    let mut list = list.unwrap_or_default();
                    // An expired certificate is refused by TLS anyway.
                    list.retain(|c| c.expires_at.is_none_or(|t| t + 7 * 24 * 3600 > now));
                    list.push(stored.clone());
                    Ok((Some(list), ()))
                },
            )
            .await?;
        Ok(credential)
    }

    /// Records when each of `used` (id, unix seconds) was last used; a
    /// later use another relay recorded stands.
    pub async fn record_uses(
        &self,
        kind: Kind,
        used: std::collections::HashMap<String, u64>,
    ) -> Result<(), StateError> {
        self.records
            .update(kind.key(), move |list: Option<Vec<Credential>>| {
                let Some(mut list) = list else {
                    return Ok((None, ()));
                };
                for c in &mut list {
                    if let Some(at) = used.get(&c.id) {
                        c.last_used_at = c.last_used_at.max(Some(*at));
                    }
                }
                Ok((Some(list), ()))
            })
            .await
    }

    /// Revokes the credential `id`; returns it, or `None` if unknown.
    pub async fn revoke(&self, kind: Kind, id: &str) -> Result<Option<Credential>, StateError> {
        self.revoke_in(kind, None, id).await
    }

    /// [`Store::revoke`], of `tenant`'s credentials only when given: another
    /// tenant's id is as unknown as one that never was.
    pub async fn revoke_in(
        &self,
        kind: Kind,
        tenant: Option<&TenantId>,
        id: &str,
    ) -> Result<Option<Credential>, StateError> {
        let id = id.to_owned();
        let tenant = tenant.cloned();
        self.records
            .update(kind.key(), move |list: Option<Vec<Credential>>| {
                let mut list = list.unwrap_or_default();
                let mine = |c: &&mut Credential| tenant.as_ref().is_none_or(|t| c.tenant == *t);
                let Some(c) = list.iter_mut().filter(mine).find(|c| c.id == id) else {
                    return Ok((None, None));
                };
                c.revoked_at.get_or_insert(unix_now());
                let revoked = c.clone();
                Ok((Some(list), Some(revoked)))
            })
            .await
    }

    /// Checks `id` and `secret` against `list`, without consuming a use.
    pub fn check_in(
        kind: Kind,
        list: &[Credential],
        id: &str,
        secret: &str,
        now: u64,
    ) -> Result<Credential, Refusal> {
        let hashed = hash(secret);
        let found = list.iter().find(|c| {
            c.id == id && constant_time_eq(c.secret_sha256.as_bytes(), hashed.as_bytes())
        });
        let (noun, hint) = (kind.noun(), kind.create_hint());
        let Some(c) = found else {
            return Err(Refusal::Unknown(noun, hint));
        };
        let id = c.id.clone();
        if let Some(at) = c.revoked_at {
            return Err(Refusal::Revoked {
                noun,
                id,
                at: rfc3339(at),
                hint,
            });
        }
        if let Some(at) = c.expires_at.filter(|t| *t <= now) {
            return Err(Refusal::Expired {
                noun,
                id,
                at: rfc3339(at),
                hint,
            });
        }
        if let Some(uses) = c.max_uses.filter(|m| c.uses >= *m) {
            return Err(Refusal::UsedUp {
                noun,
                id,
                uses,
                hint,
            });
        }
        Ok(c.clone())
    }

    /// Checks a join token's id and secret, and that it may enrol `node`
    /// with the key whose hex SHA-256 is `key_sha256`; if it is good,
    /// consumes one of its uses. The same node asking again with the same
    /// key within [`ENROL_RETRY_WINDOW`] spends nothing: its first answer
    /// was lost, and a used-up token must not strand it.
    pub async fn use_token(
        &self,
        id: &str,
        secret: &str,
        node: &NodeId,
        key_sha256: &str,
    ) -> Result<Result<Credential, Refusal>, StateError> {
        let (id, secret, node) = (id.to_owned(), secret.to_owned(), node.clone());
        let key_sha256 = key_sha256.to_owned();
        self.records
            .update(
                Kind::JoinToken.key(),
                move |list: Option<Vec<Credential>>| {
                    let mut list = list.unwrap_or_default();
                    let now = unix_now();
                    let checked = Self::check_in(Kind::JoinToken, &list, &id, &secret, now);
                    // Only a token whose secret matched and that is good
                    // but for its count may answer a retry.
                    let retry = match &checked {
                        Ok(_) | Err(Refusal::UsedUp { .. }) => list.iter().find(|c| {
                            c.id == id
                                && c.recent.iter().any(|s| s.is_retry(&node, &key_sha256, now))
                        }),
                        Err(_) => None,
                    };
                    if let Some(c) = retry {
                        return Ok((None, Ok(c.clone())));
                    }
                    let Ok(c) = checked else {
                        return Ok((None, checked));
                    };
                    if let Some(bound) = c.node.as_ref().filter(|n| **n != node) {
                        let refused = Refusal::OtherNode {
                            id: c.id.clone(),
                            node: bound.clone(),
                        };
                        return Ok((None, Err(refused)));
                    }
                    if let Some(stored) = list.iter_mut().find(|s| s.id == c.id) {
                        stored.uses += 1;
                        if stored.max_uses.is_some() {
                            stored
                                .recent
                                .retain(|s| now.saturating_sub(s.at) < ENROL_RETRY_WINDOW);
                            stored.recent.push(Spent {
                                node: node.clone(),
                                key_sha256: key_sha256.clone(),
                                at: now,
                            });
                        }
                    }
                    Ok((Some(list), Ok(c)))
                },
            )
            .await
    }

    /// Gives back the use [`Store::use_token`] spent for `node` and the
    /// key `key_sha256`, when the enrolment it was spent on was refused
    /// after all (the node was enrolled already): a refused host must not
    /// cost the token a use. A token gone since is left alone.
    pub async fn give_back(
        &self,
        id: &str,
        node: &NodeId,
        key_sha256: &str,
    ) -> Result<(), StateError> {
        let (id, node, key_sha256) = (id.to_owned(), node.clone(), key_sha256.to_owned());
        self.records
            .update(
                Kind::JoinToken.key(),
                move |list: Option<Vec<Credential>>| {
                    let mut list = list.unwrap_or_default();
                    let Some(c) = list.iter_mut().find(|c| c.id == id) else {
                        return Ok((None, ()));
                    };
                    if c.max_uses.is_some() {
                        let before = c.recent.len();
                        c.recent
                            .retain(|s| !(s.node == node && s.key_sha256 == key_sha256));
                        if c.recent.len() == before {
                            // Nothing of this node's was spent (or it was
                            // pruned long ago): there is nothing to give.
                            return Ok((None, ()));
                        }
                    }
                    c.uses = c.uses.saturating_sub(1);
                    Ok((Some(list), ()))
                },
            )
            .await
    }
}

/// Splits `tgkey1.<id>.<secret>`.
pub fn parse_api_key(text: &str) -> Option<(&str, &str)> {
    let mut parts = text.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(API_KEY_PREFIX), Some(id), Some(secret), None)
            if !id.is_empty() && secret.len() >= 16 =>
        {
            Some((id, secret))
        }
        _ => None,
    }
}

/// The text of an API key.
pub fn api_key_text(id: &str, secret: &str) -> String {
    format!("{API_KEY_PREFIX}.{id}.{secret}")
}

/// Refuses a client certificate (its hex `serial`) that `list` (a cached
/// copy of the store) says was revoked, else gives its role. A
/// certificate not in the list (issued before certificates were
/// recorded) passes as one made before roles: TLS has checked it.
pub fn check_client_cert(list: &[Credential], serial: &str) -> Result<(Role, Scope), Refusal> {
    match list.iter().find(|c| c.id.eq_ignore_ascii_case(serial)) {
        Some(c) => match c.revoked_at {
            Some(at) => Err(Refusal::Revoked {
                noun: Kind::ClientCert.noun(),
                id: c.id.clone(),
                at: rfc3339(at),
                hint: Kind::ClientCert.create_hint(),
            }),
            // A connection made before the certificate expired may still
            // be open; its calls after that are refused all the same.
            None => match c.expires_at.filter(|t| *t <= unix_now()) {
                Some(at) => Err(Refusal::Expired {
                    noun: Kind::ClientCert.noun(),
                    id: c.id.clone(),
                    at: rfc3339(at),
                    hint: Kind::ClientCert.create_hint(),
                }),
                None => Ok((c.role(), c.scope.clone())),
            },
        },
        None => Ok((Role::BEFORE_ROLES, Scope::all())),
    }
}

/// Checks an API key's text against `list` (a cached copy of the store,
/// sorted by id: a relay with many keys looks at the few with its id,
/// not at all of them).
pub fn check_api_key(list: &[Credential], text: &str) -> Result<Credential, Refusal> {
    let Some((id, secret)) = parse_api_key(text) else {
        return Err(Refusal::Malformed(
            Kind::ApiKey.noun(),
            Kind::ApiKey.create_hint(),
        ));
    };
    let from = list.partition_point(|c| c.id.as_str() < id);
    let to = from + list[from..].partition_point(|c| c.id == id);
    Store::check_in(Kind::ApiKey, &list[from..to], id, secret, unix_now())
}

#[cfg(test)]
impl NewCredential {
    /// A credential of tenant `acme` with no name, role, scope or labels,
    /// for the state's tests.
    pub(crate) fn acme(ttl: Option<u64>, uses: Option<u32>) -> Self {
        Self {
            tenant: TenantId::new("acme").expect("a valid tenant"),
            ttl: ttl.map(Duration::from_secs),
            uses,
            name: None,
            node: None,
            replace: false,
            role: None,
            scope: crate::scope::Scope::all(),
            labels: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    fn tenant(t: &str) -> TenantId {
        TenantId::new(t).unwrap()
    }

    fn new(ttl: Option<u64>, uses: Option<u32>) -> NewCredential {
        NewCredential::acme(ttl, uses)
    }

    #[tokio::test]
    async fn join_tokens_say_whether_they_are_unknown_revoked_expired_or_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Records::Files(dir.path().to_owned()));
        let (good, secret) = store
            .create(Kind::JoinToken, new(Some(600), None))
            .await
            .unwrap();
        assert_eq!(
            store
                .use_token(&good.id, &secret, &node("n1"), "k1")
                .await
                .unwrap()
                .unwrap()
                .tenant,
            tenant("acme")
        );
        let stored = fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !stored.contains(&secret),
            "the secret is stored only hashed"
        );
        assert!(matches!(
            store
                .use_token(&good.id, "0123456789abcdef0123", &node("n1"), "k1")
                .await
                .unwrap(),
            Err(Refusal::Unknown(..))
        ));

        let (once, s1) = store
            .create(Kind::JoinToken, new(Some(600), Some(1)))
            .await
            .unwrap();
        let use_once = |n: &'static str, key: &'static str| {
            let (store, id, secret) = (store.clone(), once.id.clone(), s1.clone());
            async move { store.use_token(&id, &secret, &node(n), key).await.unwrap() }
        };
        assert!(use_once("n1", "k1").await.is_ok());
        // The same node with the same key: its answer was lost; it may ask
        // again, and that spends nothing. Another key or node may not.
        assert!(use_once("n1", "k1").await.is_ok());
        for (n, key) in [("n1", "k2"), ("n2", "k1")] {
            let err = use_once(n, key).await.unwrap_err();
            assert!(err.to_string().contains("used up"), "{n} {key}: {err}");
        }
        let listed = store.list(Kind::JoinToken).await.unwrap();
        let spent = listed.iter().find(|c| c.id == once.id).unwrap();
        assert_eq!((spent.uses, spent.recent.len()), (1, 1));
        // Given back for a node that spent nothing: nothing changes.
        store.give_back(&once.id, &node("n2"), "k1").await.unwrap();
        assert!(use_once("n2", "k2").await.is_err());
        // Given back for the node that spent it: another may use it.
        store.give_back(&once.id, &node("n1"), "k1").await.unwrap();
        assert!(use_once("n2", "k2").await.is_ok());
        assert!(use_once("n3", "k3").await.is_err(), "given back once only");

        let (bound, s4) = store
            .create(
                Kind::JoinToken,
                NewCredential {
                    node: Some(node("web-1")),
                    ..new(Some(600), Some(1))
                },
            )
            .await
            .unwrap();
        let err = store
            .use_token(&bound.id, &s4, &node("web-2"), "k1")
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("for node web-1 only"), "{err}");
        assert!(
            store
                .use_token(&bound.id, &s4, &node("web-1"), "k1")
                .await
                .unwrap()
                .is_ok(),
            "a refusal for another node must not spend the token's one use"
        );

        let (old, s2) = store
            .create(Kind::JoinToken, new(Some(0), None))
            .await
            .unwrap();
        let err = store
            .use_token(&old.id, &s2, &node("n1"), "k1")
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");

        let (gone, s3) = store
            .create(Kind::JoinToken, new(None, None))
            .await
            .unwrap();
        assert!(store
            .revoke(Kind::JoinToken, &gone.id)
            .await
            .unwrap()
            .is_some());
        let err = store
            .use_token(&gone.id, &s3, &node("n1"), "k1")
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        assert!(store
            .revoke(Kind::JoinToken, "nope")
            .await
            .unwrap()
            .is_none());

        let now = unix_now();
        let states: Vec<_> = store
            .list(Kind::JoinToken)
            .await
            .unwrap()
            .iter()
            .map(|c| c.state(now))
            .collect();
        assert_eq!(
            states,
            ["active", "used up", "used up", "expired", "revoked"]
        );
    }

    #[test]
    fn a_key_is_found_among_many_sorted_by_id_even_beside_one_of_the_same_id() {
        let key = |id: &str, secret: &str| Credential {
            id: id.into(),
            tenant: tenant("acme"),
            name: None,
            secret_sha256: hash(secret),
            created_at: 0,
            expires_at: None,
            max_uses: None,
            uses: 0,
            revoked_at: None,
            node: None,
            replace: false,
            recent: Vec::new(),
            role: Some(Role::Viewer),
            scope: crate::scope::Scope::all(),
            labels: Default::default(),
            last_used_at: None,
        };
        let mut list: Vec<Credential> = (0..1000)
            .map(|i| key(&format!("{i:04x}"), "0123456789abcdef-other"))
            .collect();
        list.push(key("01f4", "0123456789abcdef-mine"));
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let found = check_api_key(&list, &api_key_text("01f4", "0123456789abcdef-mine"));
        assert_eq!(found.unwrap().role, Some(Role::Viewer));
        let other = check_api_key(&list, &api_key_text("01f4", "0123456789abcdef-other"));
        assert!(other.is_ok());
        let missing = check_api_key(&list, &api_key_text("ffff", "0123456789abcdef-mine"));
        assert!(matches!(missing, Err(Refusal::Unknown(..))));
    }

    #[tokio::test]
    async fn api_keys_check_against_a_cached_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Records::Files(dir.path().to_owned()));
        let (key, secret) = store.create(Kind::ApiKey, new(None, None)).await.unwrap();
        let text = api_key_text(&key.id, &secret);
        let list = store.list(Kind::ApiKey).await.unwrap();
        assert_eq!(check_api_key(&list, &text).unwrap().id, key.id);
        assert!(matches!(
            check_api_key(&list, "Bearer nonsense"),
            Err(Refusal::Malformed(..))
        ));
        let mut forged = text.clone();
        forged.pop();
        forged.push('x');
        assert!(matches!(
            check_api_key(&list, &forged),
            Err(Refusal::Unknown(..))
        ));
        store.revoke(Kind::ApiKey, &key.id).await.unwrap();
        let list = store.list(Kind::ApiKey).await.unwrap();
        assert!(matches!(
            check_api_key(&list, &text),
            Err(Refusal::Revoked { .. })
        ));
    }
}
