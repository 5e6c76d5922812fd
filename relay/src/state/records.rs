//! Where the installation's records live: JSON files in the state dir
//! (one relay), or etcd (a cluster, so a token made through any relay
//! enrols at every relay and a revocation made anywhere holds
//! everywhere).
//!
//! Records are named by keys; each backend stores a key whole:
//!
//! ```text
//! key                    state dir                  etcd
//! join-tokens            tokens.json                /tunnelgate/v1/records/join-tokens
//! api-keys               api-keys.json              /tunnelgate/v1/records/api-keys
//! revocations            revoked.json               /tunnelgate/v1/records/revocations
//! nodes/<tenant>/<node>  nodes/<tenant>/<node>.json /tunnelgate/v1/records/nodes/<tenant>/<node>
//! ```
//!
//! Every change is a read-modify-write of one key ([`Records::update`]):
//! under the state dir's lock for files (the CLI and a relay never lose
//! each other's update), or as an etcd transaction on the key's revision,
//! tried again when another relay changed it in between. The CA key is
//! never here: it stays in each relay's state dir, mounted from one
//! secret.
//!
//! This module knows what keys hold only as JSON; the meaning is in
//! [`super::credentials`] and [`super::nodes`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{io_err, read_json, write_json, Locked, StateError};

/// The etcd prefix of records.
pub const ETCD_PREFIX: &str = "/tunnelgate/v1/records/";

/// How long one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The records' store.
#[derive(Clone)]
pub enum Records {
    /// JSON files in this state dir.
    Files(PathBuf),
    /// etcd at these endpoints (the client is large; records are opened
    /// once per process).
    Etcd(Box<EtcdRecords>),
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Files(dir) => write!(f, "Records::Files({})", dir.display()),
            Self::Etcd(e) => write!(f, "Records::Etcd({})", e.endpoints),
        }
    }
}

/// A connection to etcd for records.
#[derive(Clone)]
pub struct EtcdRecords {
    client: Client,
    endpoints: String,
}

/// A change to a record another process made, as the watch reports it.
#[derive(Debug)]
pub struct Changed {
    /// The record's key (`api-keys`, `nodes/acme/web-1`, ...).
    pub key: String,
    /// Its new value, or `None` when it was deleted.
    pub value: Option<Vec<u8>>,
}

fn file_of(dir: &Path, key: &str) -> PathBuf {
    match key {
        "join-tokens" => dir.join("tokens.json"),
        "api-keys" => dir.join("api-keys.json"),
        "revocations" => dir.join("revoked.json"),
        other => dir.join(format!("{other}.json")),
    }
}

fn parse<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        path: PathBuf::from(format!("{ETCD_PREFIX}{key}")),
        reason: e.to_string(),
    })
}

impl EtcdRecords {
    fn failed(&self) -> impl Fn(etcd_client::Error) -> StateError + '_ {
        |source| StateError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// Watches every record from `revision` on; see [`Records::watch`].
    async fn watch(
        &self,
        revision: i64,
        mut on_change: impl FnMut(Changed) + Send,
    ) -> Result<(), StateError> {
        let mut client = self.client.clone();
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(ETCD_PREFIX, Some(options))
            .await
            .map_err(self.failed())?;
        while let Some(resp) = stream.message().await.map_err(self.failed())? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(self.failed()(etcd_client::Error::WatchError(format!(
                    "the records' watch was cancelled ({})",
                    resp.cancel_reason()
                ))));
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Some(key) = kv.key_str().ok().and_then(|k| k.strip_prefix(ETCD_PREFIX)) else {
                    continue;
                };
                on_change(Changed {
                    key: key.to_owned(),
                    value: match event.event_type() {
                        etcd_client::EventType::Put => Some(kv.value().to_vec()),
                        etcd_client::EventType::Delete => None,
                    },
                });
            }
        }
        Err(self.failed()(etcd_client::Error::WatchError(
            "the records' watch ended".into(),
        )))
    }
}

impl Records {
    /// Records in etcd at `endpoints` (`http://HOST:PORT`); fails, naming
    /// them, when etcd does not answer.
    pub async fn etcd(endpoints: &[String]) -> Result<Self, StateError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let failed = |source| StateError::Etcd {
            endpoints: endpoints.join(","),
            source,
        };
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(failed)?;
        // connect() is lazy about the network: ask something to know.
        client
            .get(ETCD_PREFIX, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(failed)?;
        Ok(Self::Etcd(Box::new(EtcdRecords {
            client,
            endpoints: endpoints.join(","),
        })))
    }

    /// Whether records are shared through etcd.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Etcd(_))
    }

    /// The record at `key`, if there is one.
    pub async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StateError> {
        match self {
            Self::Files(dir) => {
                let path = file_of(dir, key);
                tokio::task::spawn_blocking(move || read_json(&path)).await?
            }
            Self::Etcd(e) => {
                let mut client = e.client.clone();
                let resp = client
                    .get(format!("{ETCD_PREFIX}{key}"), None)
                    .await
                    .map_err(e.failed())?;
                resp.kvs()
                    .first()
                    .map(|kv| parse(key, kv.value()))
                    .transpose()
            }
        }
    }

    /// Every node record, and the revision they were read at (for a watch
    /// to start from; 0 for files).
    pub async fn nodes<T: DeserializeOwned + Send + 'static>(
        &self,
    ) -> Result<(Vec<T>, i64), StateError> {
        match self {
            Self::Files(dir) => {
                let dir = dir.clone();
                let records = tokio::task::spawn_blocking(move || load_node_files(&dir)).await??;
                Ok((records, 0))
            }
            Self::Etcd(e) => {
                let mut client = e.client.clone();
                let resp = client
                    .get(
                        format!("{ETCD_PREFIX}nodes/"),
                        Some(GetOptions::new().with_prefix()),
                    )
                    .await
                    .map_err(e.failed())?;
                let revision = resp.header().map_or(0, |h| h.revision());
                let records = resp
                    .kvs()
                    .iter()
                    .map(|kv| parse(kv.key_str().unwrap_or("nodes/?"), kv.value()))
                    .collect::<Result<_, _>>()?;
                Ok((records, revision))
            }
        }
    }

    /// Reads `key`, lets `change` decide its new value (`None`: leave it)
    /// and a result, and writes it, as one step. `change` may run more
    /// than once when another relay changed the key in between.
    pub async fn update<T, R>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<T>) -> Result<(Option<T>, R), StateError> + Send + 'static,
    ) -> Result<R, StateError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Send + 'static,
    {
        match self {
            Self::Files(dir) => {
                let (dir, path) = (dir.clone(), file_of(dir, key));
                tokio::task::spawn_blocking(move || {
                    let _lock = Locked::take(&dir)?;
                    let (next, result) = change(read_json(&path)?)?;
                    if let Some(next) = next {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                        }
                        write_json(&path, &next)?;
                    }
                    Ok(result)
                })
                .await?
            }
            Self::Etcd(e) => {
                let path = format!("{ETCD_PREFIX}{key}");
                let mut client = e.client.clone();
                loop {
                    let resp = client.get(path.clone(), None).await.map_err(e.failed())?;
                    let (current, unchanged) = match resp.kvs().first() {
                        Some(kv) => (
                            Some(parse(key, kv.value())?),
                            Compare::mod_revision(
                                path.clone(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            ),
                        ),
                        None => (
                            None,
                            Compare::create_revision(path.clone(), CompareOp::Equal, 0),
                        ),
                    };
                    let (next, result) = change(current)?;
                    let Some(next) = next else {
                        return Ok(result);
                    };
                    let json = serde_json::to_vec_pretty(&next).expect("records serialize");
                    let txn = Txn::new().when([unchanged]).and_then([TxnOp::put(
                        path.clone(),
                        json,
                        None,
                    )]);
                    if client.txn(txn).await.map_err(e.failed())?.succeeded() {
                        return Ok(result);
                    }
                    tracing::debug!(key, "a record changed under this update; reading it again");
                }
            }
        }
    }

    /// Calls `on_change` for every change to a record from `revision` on,
    /// until etcd fails (then `Err`, and the caller lists again). Files
    /// are watched by their stamps instead, so this returns at once.
    pub async fn watch(
        &self,
        revision: i64,
        on_change: impl FnMut(Changed) + Send,
    ) -> Result<(), StateError> {
        match self {
            Self::Files(_) => Ok(()),
            Self::Etcd(e) => e.watch(revision, on_change).await,
        }
    }
}

/// Every node record in the state dir `dir`.
fn load_node_files<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StateError> {
    let nodes = dir.join("nodes");
    let mut records = Vec::new();
    let tenants = match std::fs::read_dir(&nodes) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(io_err(&nodes)(e)),
    };
    for tenant in tenants {
        let tenant = tenant.map_err(io_err(&nodes))?.path();
        if !tenant.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&tenant).map_err(io_err(&tenant))? {
            let file = file.map_err(io_err(&tenant))?.path();
            if file.extension().is_some_and(|e| e == "json") {
                records.extend(read_json::<T>(&file)?);
            }
        }
    }
    Ok(records)
}
