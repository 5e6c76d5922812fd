//! When each API key and client certificate was last used: noted in
//! memory on every call (one map write), and written to the records at
//! most every [`FLUSH_EVERY`] and at shutdown, so `api-key list` and
//! `/v1/keys` can say it without a records write per call.

use std::collections::HashMap;
use std::time::Duration;

use dashmap::DashMap;

use super::credentials::{Kind, Store};
use super::{unix_now, StateError};

/// How often the uses noted are written to the records.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);

/// The uses noted since the last write.
#[derive(Debug, Default)]
pub struct Uses {
    seen: DashMap<(Kind, String), u64>,
}

impl Uses {
    /// Notes a use of credential `id` of `kind` now.
    pub fn note(&self, kind: Kind, id: &str) {
        self.seen.insert((kind, id.to_owned()), unix_now());
    }

    /// Writes the uses noted so far to the records and forgets them.
    pub async fn flush(&self, store: &Store) -> Result<(), StateError> {
        for kind in [Kind::ApiKey, Kind::ClientCert] {
            let mut used = HashMap::new();
            self.seen.retain(|(k, id), at| {
                if *k == kind {
                    used.insert(id.clone(), *at);
                }
                *k != kind
            });
            if !used.is_empty() {
                store.record_uses(kind, used).await?;
            }
        }
        Ok(())
    }
}
