//! The state dir, and the relay's in-memory copy of what it holds.
//!
//! ```text
//! state-dir/
//!   ca.pem  ca-key.pem           the installation's CA (key 0600; see `identity`),
//!                                unless the relay reads it from --ca-dir
//!   server.pem server-key.pem    re-issued at every start, for the names in use
//!   tokens.json api-keys.json    hashed secrets (see `credentials`)       } the records: here,
//!   nodes/<tenant>/<node>.json   enrolled nodes: certificate serials      } or in etcd in a
//!   revoked.json                 revocations, watched by a serving relay  } cluster (`records`)
//!   relay-id                     this relay's stable name
//!   quic-reset.key               secret behind the QUIC stateless-reset key (0600)
//!   state.lock                   taken for every read-modify-write
//! ```
//!
//! The CLI changes the records while relays serve; a relay reads them
//! once at start and then only what [`State::watch`] sees change (the
//! files' contents, or etcd's watch), so the hot path (a call, a
//! handshake) never touches the disk or etcd. Writes the relay itself makes (enrolment,
//! renewal, token uses) never block an async worker. This module knows
//! nothing of certificates' contents, sessions or HTTP.

pub mod credentials;
pub mod nodes;
pub mod records;
pub mod standing;
pub mod uses;
mod watch;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use rand::RngCore;
use serde::Serialize;
use tunnelgate_proto::token::{JoinToken, MalformedToken};
use tunnelgate_proto::{NodeId, NodeKey, RelayId, TenantId};

use credentials::{Credential, Kind, NewCredential, Refusal, Store};
pub use nodes::CertMode;
use nodes::{NodeRecord, Revocation};
use records::Records;

/// Something in the state dir failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file is corrupt.
    #[error("{path} is corrupt ({reason}); restore it from backup or remove it to start afresh")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A revoked node asked for a certificate.
    #[error("node {0} was revoked")]
    Revoked(NodeKey),
    /// A join token tried to enrol a node that is enrolled already.
    #[error("node {0} is already enrolled; a join token cannot take over an enrolled node. To move it to a new host, revoke it first (`tunnelgate-relay node revoke {0}`) or enrol with a token made for it by `tunnelgate-relay token create --node NODE --replace`")]
    AlreadyEnrolled(NodeKey),
    /// A secret file others may read.
    #[error("{path} is readable by others (mode {mode:o}); anyone who can read it can end this relay's QUIC sessions: run `chmod 600 {path}`")]
    OpenPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A blocking state task did not finish (the runtime is stopping).
    #[error("a state-dir task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The records in etcd could not be read or written.
    #[error(
        "the records in etcd at {endpoints}: {source}; check --registry and that etcd runs there"
    )]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        source: etcd_client::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes a state file readable by its owner only, atomically.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    tunnelgate_session::files::write_atomic(path, contents, true).map_err(io_err(path))
}

/// Reads a JSON state file; `None` if it does not exist yet.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes a JSON state file readable by its owner only, atomically.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), StateError> {
    let json = serde_json::to_vec_pretty(value).expect("state files serialize");
    write_private(path, &json)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats seconds since the epoch as RFC 3339.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Holds the state dir's lock for a read-modify-write of its files.
/// Blocking: take it on the blocking pool or in the CLI.
pub(crate) struct Locked(fs::File);

impl Locked {
    pub(crate) fn take(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("state.lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.lock().map_err(io_err(&path))?;
        Ok(Self(file))
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Whether a node may connect, as the cached node records say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    /// Enrolled; these certificate serials are good.
    Enrolled(Vec<String>),
    /// Revoked by an operator at this time (seconds since the epoch).
    Revoked(u64),
    /// Never enrolled here (or its record is gone).
    Unknown,
}

/// The state dir and the records, with the relay's cache of them.
pub struct State {
    dir: PathBuf,
    relay_id: RelayId,
    records: Records,
    store: Store,
    api_keys: RwLock<Arc<Vec<Credential>>>,
    client_certs: RwLock<Arc<Vec<Credential>>>,
    nodes: DashMap<NodeKey, NodeRecord>,
    /// When keys and certificates were last used, until written.
    uses: uses::Uses,
    /// Whether the credentials of calls in flight still stand.
    standing: standing::Standing,
    /// Lets one of this process's state-dir writes at a time onto the
    /// blocking pool. They serialize on the state dir's lock anyway; with
    /// a thousand agents enrolling at once, letting them all contend for
    /// it from as many threads made an enrolment storm 2.2x slower than
    /// doing them one after another. In etcd every enrolment's
    /// compare-and-swap on the one join token's record conflicts with the
    /// others in flight, so there too one at a time goes fastest.
    writes: tokio::sync::Semaphore,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("dir", &self.dir)
            .field("relay_id", &self.relay_id)
            .finish_non_exhaustive()
    }
}

impl State {
    /// Opens the state dir (creating it and the relay id on first start)
    /// and reads the API keys and node records from `records` into memory.
    pub async fn open(dir: &Path, records: Records) -> Result<Self, StateError> {
        let owned = dir.to_owned();
        let relay_id = tokio::task::spawn_blocking(move || Self::open_dir(&owned)).await??;
        let store = Store::new(records.clone());
        let state = Self {
            dir: dir.to_owned(),
            relay_id,
            api_keys: RwLock::new(Arc::new(by_id(store.list(Kind::ApiKey).await?))),
            client_certs: RwLock::new(Arc::new(store.list(Kind::ClientCert).await?)),
            store,
            nodes: DashMap::new(),
            uses: uses::Uses::default(),
            standing: standing::Standing::default(),
            writes: tokio::sync::Semaphore::new(1),
            records,
        };
        let (nodes, _) = state.records.nodes::<NodeRecord>().await?;
        for record in nodes {
            state.nodes.insert(record.key(), record);
        }
        Ok(state)
    }

    /// Opens the state dir with its own files as the records.
    pub async fn open_files(dir: &Path) -> Result<Self, StateError> {
        Self::open(dir, Records::Files(dir.to_owned())).await
    }

    /// Creates the state dir and reads (or makes) the relay id. Blocking.
    fn open_dir(dir: &Path) -> Result<RelayId, StateError> {
        fs::create_dir_all(dir.join("nodes")).map_err(io_err(dir))?;
        let id_path = dir.join("relay-id");
        match fs::read_to_string(&id_path) {
            Ok(text) => RelayId::new(text.trim()).map_err(|e| StateError::Corrupt {
                path: id_path.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = RelayId::new(format!("relay-{}", random_hex(4)))
                    .expect("relay- and hex digits make a valid id");
                write_private(&id_path, id.as_str().as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(io_err(&id_path)(e)),
        }
    }

    /// Uses `relay_id` instead of the state dir's (`--relay-id`).
    pub fn with_relay_id(mut self, relay_id: Option<RelayId>) -> Self {
        if let Some(id) = relay_id {
            self.relay_id = id;
        }
        self
    }

    /// The state dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// This relay's stable name.
    pub fn relay_id(&self) -> &RelayId {
        &self.relay_id
    }

    /// The join tokens and API keys.
    pub fn credentials(&self) -> &Store {
        &self.store
    }

    /// The recorded client certificates as last read.
    pub fn client_certs(&self) -> Arc<Vec<Credential>> {
        self.client_certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the credentials of calls in flight still stand ([`standing`]).
    pub fn standing(&self) -> &standing::Standing {
        &self.standing
    }

    /// When keys and certificates were last used ([`uses`]).
    pub fn uses(&self) -> &uses::Uses {
        &self.uses
    }

    /// Writes the uses noted so far to the records.
    pub async fn flush_uses(&self) -> Result<(), StateError> {
        self.uses.flush(&self.store).await
    }

    /// The API keys as last read, sorted by id (as
    /// [`credentials::check_api_key`] searches them).
    pub fn api_keys(&self) -> Arc<Vec<Credential>> {
        self.api_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tenant's enrolled nodes that are not revoked, from memory.
    pub fn enrolled(&self, tenant: &TenantId) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|r| &r.key().tenant == tenant && r.value().revoked_at.is_none())
            .map(|r| r.key().node_id.clone())
            .collect()
    }

    /// The labels `key`'s join token gave it, from memory; `None` when it
    /// had none (its agent's own labels stand).
    pub fn node_labels(&self, key: &NodeKey) -> Option<std::collections::BTreeMap<String, String>> {
        self.nodes
            .get(key)
            .filter(|r| !r.labels.is_empty())
            .map(|r| r.labels.clone())
    }

    /// Whether `key` may connect, from memory.
    pub fn node_status(&self, key: &NodeKey) -> NodeStatus {
        match self.nodes.get(key) {
            None => NodeStatus::Unknown,
            Some(r) => match r.revoked_at {
                Some(at) => NodeStatus::Revoked(at),
                None => NodeStatus::Enrolled(r.serials.clone()),
            },
        }
    }

    /// Whether `key` may connect with the certificate `serial`, from
    /// memory, except that in a cluster a node this relay has not heard
    /// of, or a certificate it has not seen yet, is read from the records
    /// first: an agent that enrolled or renewed at another relay comes
    /// here at once, and may beat the watch.
    pub async fn node_status_for(&self, key: &NodeKey, serial: &str) -> NodeStatus {
        let cached = self.node_status(key);
        let known = match &cached {
            NodeStatus::Enrolled(serials) => serials.iter().any(|s| s == serial),
            NodeStatus::Revoked(_) => true,
            NodeStatus::Unknown => false,
        };
        if known || !self.records.is_shared() {
            return cached;
        }
        match nodes::load(&self.records, key).await {
            Ok(Some(record)) => {
                self.nodes.insert(key.clone(), record);
                self.node_status(key)
            }
            Ok(None) => cached,
            Err(e) => {
                tracing::warn!(node = %key, error = %e, "cannot read the node's record; answering from what was read before");
                cached
            }
        }
    }

    /// Makes a join token whose text carries `ca_fingerprint`; returns the
    /// whole text, the only time the secret is ever seen.
    pub async fn create_join_token(
        &self,
        new: NewCredential,
        ca_fingerprint: [u8; 32],
    ) -> Result<(String, Credential), StateError> {
        let (stored, secret) = self.store.create(Kind::JoinToken, new).await?;
        let text = JoinToken {
            ca_fingerprint,
            id: stored.id.clone(),
            secret,
        };
        Ok((text.to_string(), stored))
    }

    /// Checks a join token an agent presented for `node` and the key
    /// `key_sha256` against this installation (`ca_fingerprint`) and
    /// consumes one of its uses (see [`credentials::Store::use_token`]).
    pub async fn use_join_token(
        self: &Arc<Self>,
        text: String,
        ca_fingerprint: [u8; 32],
        node: &NodeId,
        key_sha256: &str,
    ) -> Result<Result<Credential, Refusal>, StateError> {
        let token: JoinToken = match text.parse() {
            Ok(t) => t,
            Err(MalformedToken) => {
                return Ok(Err(Refusal::Malformed(
                    "join token",
                    "tunnelgate-relay token create",
                )))
            }
        };
        if token.ca_fingerprint != ca_fingerprint {
            return Ok(Err(Refusal::WrongInstallation));
        }
        self.gated(
            self.store
                .use_token(&token.id, &token.secret, node, key_sha256),
        )
        .await
    }

    /// Gives back a join token's use that enrolled nothing (see
    /// [`credentials::Store::give_back`]).
    pub async fn give_back_join_token(
        &self,
        id: &str,
        node: &NodeId,
        key_sha256: &str,
    ) -> Result<(), StateError> {
        self.gated(self.store.give_back(id, node, key_sha256)).await
    }

    /// Records that `key` now holds the certificate `serial`; see
    /// [`CertMode`] for what a renewal and an enrolment may replace.
    pub async fn record_node_cert(
        self: &Arc<Self>,
        key: NodeKey,
        serial: String,
        mode: CertMode,
    ) -> Result<(), StateError> {
        let record = self
            .gated(nodes::record_cert(&self.records, &key, serial, mode))
            .await?;
        self.nodes.insert(record.key(), record);
        Ok(())
    }

    /// Runs one write of the relay's own, one at a time: they serialize
    /// on the state dir's lock, or on one etcd key (the join token every
    /// enrolment uses), anyway.
    async fn gated<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let _turn = self
            .writes
            .acquire()
            .await
            .expect("the write gate is never closed");
        write.await
    }

    /// Revokes a node (the CLI's `node revoke`). Serving relays see it
    /// through [`State::watch`].
    pub async fn revoke_node(&self, key: &NodeKey) -> Result<Option<NodeRecord>, StateError> {
        let record = nodes::revoke(&self.records, key).await?;
        if let Some(r) = &record {
            self.nodes.insert(r.key(), r.clone());
        }
        Ok(record)
    }

    /// The key of this relay's QUIC stateless resets (blocking). It must
    /// outlive a restart, so that agents recognise the reset a restarted
    /// relay answers their packets with and reconnect at once: it is
    /// derived from a secret made on first start and kept owner-only in
    /// the state dir, and from the relay id, so relays that share a copied
    /// state dir but not an id still get keys of their own.
    pub fn quic_reset_key(&self) -> Result<[u8; 32], StateError> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("quic-reset.key");
        let secret = match fs::read_to_string(&path) {
            Ok(text) => {
                let mode = fs::metadata(&path)
                    .map_err(io_err(&path))?
                    .permissions()
                    .mode()
                    & 0o777;
                if mode & 0o077 != 0 {
                    return Err(StateError::OpenPermissions { path, mode });
                }
                let secret = text.trim().to_owned();
                if hex::decode(&secret).map_or(true, |b| b.len() != 32) {
                    return Err(StateError::Corrupt {
                        path,
                        reason: "not 64 hex digits; remove it and a new one is made (agents then wait for a timeout once)".into(),
                    });
                }
                secret
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_hex(32);
                write_private(&path, secret.as_bytes())?;
                secret
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut hash = Sha256::new();
        hash.update(b"tunnelgate quic stateless reset\0");
        hash.update(secret.as_bytes());
        hash.update(b"\0");
        hash.update(self.relay_id.as_str().as_bytes());
        Ok(hash.finalize().into())
    }

    /// Every revocation so far.
    pub async fn revocations(&self) -> Result<Vec<Revocation>, StateError> {
        nodes::revocations(&self.records).await
    }
}

/// Credentials sorted by id, for a search by halves.
fn by_id(mut list: Vec<Credential>) -> Vec<Credential> {
    list.sort_by(|a, b| a.id.cmp(&b.id));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> NodeKey {
        NodeKey::parse(text).unwrap()
    }

    #[tokio::test]
    async fn the_quic_reset_key_survives_a_restart_is_per_relay_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = State::open_files(dir.path())
            .await
            .unwrap()
            .quic_reset_key()
            .unwrap();
        let path = dir.path().join("quic-reset.key");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "made owner-only");
        let again = State::open_files(dir.path())
            .await
            .unwrap()
            .quic_reset_key()
            .unwrap();
        assert_eq!(first, again, "a restarted relay keeps its key");

        // Another relay id over a copy of the same secret: another key.
        let other = tempfile::tempdir().unwrap();
        fs::copy(&path, other.path().join("quic-reset.key")).unwrap();
        let other_key = State::open_files(other.path())
            .await
            .unwrap()
            .quic_reset_key()
            .unwrap();
        assert_ne!(first, other_key);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = State::open_files(dir.path())
            .await
            .unwrap()
            .quic_reset_key()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("chmod 600") && text.contains("644"), "{text}");
    }

    #[tokio::test]
    async fn join_tokens_carry_their_installation_and_are_used_up() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open_files(dir.path()).await.unwrap());
        let ours = [7u8; 32];
        let new = NewCredential::acme(Some(60), Some(1));
        let (text, _) = state.create_join_token(new, ours).await.unwrap();
        let n = NodeId::new("n1").unwrap();
        let used = state.use_join_token(text.clone(), ours, &n, "k1").await;
        assert_eq!(used.unwrap().unwrap().tenant.as_str(), "acme");
        let again = state.use_join_token(text.clone(), ours, &n, "k2").await;
        assert!(
            matches!(again, Ok(Err(Refusal::UsedUp { .. }))),
            "{again:?}"
        );
        let foreign = state.use_join_token(text, [8u8; 32], &n, "k1").await;
        assert_eq!(foreign.unwrap().unwrap_err(), Refusal::WrongInstallation);
        let junk = state
            .use_join_token("nonsense".into(), ours, &n, "k1")
            .await
            .unwrap();
        assert!(matches!(junk, Err(Refusal::Malformed(..))));
    }

    #[tokio::test]
    async fn node_records_keep_two_certificates_and_revocation_sticks() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open_files(dir.path()).await.unwrap());
        let web = key("acme/web-1");
        assert_eq!(state.node_status(&web), NodeStatus::Unknown);
        let enrol = |token: &str, replace| CertMode::Enrol {
            token_id: token.into(),
            replace,
            labels: Default::default(),
        };
        state
            .record_node_cert(web.clone(), "s1".into(), enrol("t1", false))
            .await
            .unwrap();
        // Another token cannot take the enrolled node over; the same one
        // may ask again soon after (its first answer may have been lost),
        // and a token made to replace it may.
        let taken = state
            .record_node_cert(web.clone(), "evil".into(), enrol("t2", false))
            .await;
        assert!(
            matches!(taken, Err(StateError::AlreadyEnrolled(_))),
            "{taken:?}"
        );
        let message = taken.unwrap_err().to_string();
        assert!(
            message.contains("node revoke") && message.contains("--replace"),
            "{message}"
        );
        state
            .record_node_cert(web.clone(), "s0".into(), enrol("t1", false))
            .await
            .unwrap();
        state
            .record_node_cert(web.clone(), "s1".into(), enrol("t3", true))
            .await
            .unwrap();
        assert_eq!(
            state.node_status(&web),
            NodeStatus::Enrolled(vec!["s1".into()])
        );
        state
            .record_node_cert(web.clone(), "s2".into(), CertMode::Renew)
            .await
            .unwrap();
        assert_eq!(
            state.node_status(&web),
            NodeStatus::Enrolled(vec!["s1".into(), "s2".into()]),
            "a renewal keeps the previous certificate good"
        );
        state
            .record_node_cert(web.clone(), "s3".into(), CertMode::Renew)
            .await
            .unwrap();
        assert_eq!(
            state.node_status(&web),
            NodeStatus::Enrolled(vec!["s2".into(), "s3".into()])
        );
        assert_eq!(
            state.node_status(&key("other/web-1")),
            NodeStatus::Unknown,
            "node ids are per tenant"
        );

        // The CLI revokes through its own copy; the serving relay's copy
        // learns it when it rereads.
        let cli = State::open_files(dir.path()).await.unwrap();
        assert_eq!(state.relay_id(), cli.relay_id());
        cli.revoke_node(&web).await.unwrap().unwrap();
        assert!(matches!(state.node_status(&web), NodeStatus::Enrolled(_)));
        let revoked = state.reload().await.unwrap();
        assert!(matches!(state.node_status(&web), NodeStatus::Revoked(_)));
        assert_eq!(revoked.len(), 1);
        assert!(revoked[0].covers(&web, "s3") && !revoked[0].covers(&web, "s1"));
        let renew = state
            .record_node_cert(web.clone(), "s4".into(), CertMode::Renew)
            .await;
        assert!(matches!(renew, Err(StateError::Revoked(_))), "{renew:?}");

        // A restarted relay reads every record back.
        let restarted = State::open_files(dir.path()).await.unwrap();
        assert!(matches!(
            restarted.node_status(&web),
            NodeStatus::Revoked(_)
        ));
    }
}
