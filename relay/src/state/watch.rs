//! Watching the records for what other processes change: the CLI on
//! this machine (the state dir's files), or in a cluster any relay
//! (etcd's watch). What it sees lands in the relay's cache, and the
//! revocations go to the relay so it can drop revoked nodes' sessions.
//! It reads only; it never writes a record.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tunnelgate_proto::NodeKey;

use super::credentials::{Credential, Kind};
use super::nodes::{self, NodeRecord, Revocation};
use super::{by_id, records, State, StateError};

/// How often a serving relay looks for changes the CLI made.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

impl State {
    /// What the watched files hold. Their contents, not their mtimes: the
    /// kernel stamps a file from a coarse clock, so a key the CLI adds a
    /// moment after the last look can leave the mtime as it was, and the
    /// relay would not know the key until something else changed.
    fn watched_stamp(dir: &Path) -> Vec<Option<Vec<u8>>> {
        ["revoked.json", "api-keys.json", "client-certs.json"]
            .iter()
            .map(|f| fs::read(dir.join(f)).ok())
            .collect()
    }

    fn set_api_keys(&self, keys: Vec<Credential>) {
        self.standing.recheck(Kind::ApiKey, &keys);
        *self.api_keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(by_id(keys));
    }

    fn set_client_certs(&self, certs: Vec<Credential>) {
        self.standing.recheck(Kind::ClientCert, &certs);
        *self.client_certs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(certs);
    }

    /// Rereads what the CLI may have changed: the API keys, the client
    /// certificates, and the node records of every revoked node.
    pub(super) async fn reload(&self) -> Result<Vec<Revocation>, StateError> {
        self.set_api_keys(self.store.list(Kind::ApiKey).await?);
        self.set_client_certs(self.store.list(Kind::ClientCert).await?);
        let revoked = self.revocations().await?;
        for r in &revoked {
            let key = NodeKey {
                tenant: r.tenant.clone(),
                node_id: r.node_id.clone(),
            };
            if let Some(record) = nodes::load(&self.records, &key).await? {
                self.nodes.insert(key, record);
            }
        }
        Ok(revoked)
    }

    /// Watches the records until `stop`: when the API keys or the
    /// revocations changed (the CLI, or in a cluster any relay), rereads
    /// them and hands the revocations to `on_change`, so the relay can drop
    /// revoked nodes' sessions. In a cluster it also learns every node
    /// another relay enrolled or renewed.
    pub async fn watch(
        self: Arc<Self>,
        stop: CancellationToken,
        on_change: impl FnMut(&[Revocation]) + Send,
    ) {
        match self.records.is_shared() {
            false => self.watch_files(stop, on_change).await,
            true => self.watch_etcd(stop, on_change).await,
        }
    }

    async fn watch_files(
        self: Arc<Self>,
        stop: CancellationToken,
        mut on_change: impl FnMut(&[Revocation]) + Send,
    ) {
        let stamp = |dir: PathBuf| async move {
            tokio::task::spawn_blocking(move || Self::watched_stamp(&dir))
                .await
                .unwrap_or_default()
        };
        let mut seen = stamp(self.dir.clone()).await;
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                () = stop.cancelled() => return,
            }
            let now = stamp(self.dir.clone()).await;
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload().await {
                Ok(revoked) => on_change(&revoked),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reread the state dir; keeping what was read before")
                }
            }
        }
    }

    async fn watch_etcd(
        self: Arc<Self>,
        stop: CancellationToken,
        mut on_change: impl FnMut(&[Revocation]) + Send,
    ) {
        loop {
            let watched = async {
                // List, then watch from the listed revision: nothing that
                // changed in between (or while etcd was away) is missed.
                let (nodes, revision) = self.records.nodes::<NodeRecord>().await?;
                for record in nodes {
                    self.nodes.insert(record.key(), record);
                }
                on_change(&self.reload().await?);
                self.records
                    .watch(revision, |changed| {
                        if let Some(revoked) = self.apply(changed) {
                            on_change(&revoked);
                        }
                    })
                    .await
            };
            tokio::select! {
                result = watched => if let Err(e) = result {
                    tracing::warn!(error = %e, "watching the records in etcd failed; keeping what was read, and listing again");
                },
                () = stop.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Applies one record another process changed to the cache; returns
    /// the revocations when those changed.
    fn apply(&self, changed: records::Changed) -> Option<Vec<Revocation>> {
        let value = changed.value?;
        let unreadable = |e: serde_json::Error| {
            tracing::warn!(key = %changed.key, error = %e, "ignoring an unreadable record");
        };
        if changed.key == Kind::ApiKey.key() {
            serde_json::from_slice(&value)
                .map(|keys| self.set_api_keys(keys))
                .unwrap_or_else(unreadable);
        } else if changed.key == Kind::ClientCert.key() {
            serde_json::from_slice(&value)
                .map(|certs| self.set_client_certs(certs))
                .unwrap_or_else(unreadable);
        } else if changed.key == nodes::REVOCATIONS {
            return serde_json::from_slice(&value).map_err(unreadable).ok();
        } else if changed.key.starts_with("nodes/") {
            match serde_json::from_slice::<NodeRecord>(&value) {
                Ok(record) => {
                    self.nodes.insert(record.key(), record);
                }
                Err(e) => unreadable(e),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::credentials::NewCredential;

    fn new_key() -> NewCredential {
        NewCredential::acme(None, None)
    }

    async fn known(relay: &State, id: &str) -> bool {
        for _ in 0..40 {
            if relay.api_keys().iter().any(|k| k.id == id) {
                return true;
            }
            tokio::time::sleep(WATCH_INTERVAL / 2).await;
        }
        false
    }

    #[tokio::test]
    async fn a_key_the_cli_adds_is_seen_even_when_the_file_keeps_its_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Arc::new(State::open_files(dir.path()).await.unwrap());
        let cli = State::open_files(dir.path()).await.unwrap();
        let stop = CancellationToken::new();
        let watching = tokio::spawn(relay.clone().watch(stop.clone(), |_| {}));

        let (first, _) = cli
            .credentials()
            .create(Kind::ApiKey, new_key())
            .await
            .unwrap();
        assert!(
            known(&relay, &first.id).await,
            "the first key was never seen"
        );
        // Two writes within one tick of the kernel's coarse file clock
        // leave the mtime as it was; made so here on purpose.
        let file = dir.path().join("api-keys.json");
        let stamped = fs::metadata(&file).unwrap().modified().unwrap();
        let (second, _) = cli
            .credentials()
            .create(Kind::ApiKey, new_key())
            .await
            .unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(stamped)
            .unwrap();
        assert!(
            known(&relay, &second.id).await,
            "a key added without a new mtime was never seen"
        );
        stop.cancel();
        watching.await.unwrap();
    }
}
