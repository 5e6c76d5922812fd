//! Whether the credential a long call was let in with still stands: one
//! cancellation token per API key or client certificate that a call in
//! flight holds, fired when the credential expires (by a timer) or when
//! the relay's cached list shows it revoked or gone (on every reload of
//! that list, so within a second of a change at any relay). Streams that
//! outlive their credential end on it, saying why ([`Withdrawn::why`]).
//!
//! Nothing here decides a new call: authentication refuses an expired or
//! revoked credential on its own. A token is made on first use of a
//! credential and dropped once fired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::credentials::{Credential, Kind};
use super::rfc3339;

/// What a call holds of its credential's standing.
#[derive(Debug, Clone)]
pub struct Withdrawn {
    token: CancellationToken,
    why: Arc<OnceLock<String>>,
}

impl Withdrawn {
    /// Fires when the credential stops standing.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Why it stopped standing, once it did.
    pub fn why(&self) -> &str {
        self.why
            .get()
            .map_or("its credential no longer stands", String::as_str)
    }

    fn withdraw(&self, why: String) {
        let _ = self.why.set(why);
        self.token.cancel();
    }
}

/// The standing of every credential a call in flight holds.
#[derive(Debug, Default)]
pub struct Standing {
    held: Mutex<HashMap<(Kind, String), Withdrawn>>,
}

impl Standing {
    /// The standing of credential `id` of `kind`, which expires at
    /// `expires_at` (unix seconds) if ever; `noun` names it in the reason.
    pub fn of(&self, kind: Kind, id: &str, expires_at: Option<u64>) -> Withdrawn {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = held.get(&(kind, id.to_owned())) {
            return w.clone();
        }
        let w = Withdrawn {
            token: CancellationToken::new(),
            why: Arc::default(),
        };
        held.insert((kind, id.to_owned()), w.clone());
        if let Some(at) = expires_at {
            let fired = w.clone();
            let noun = kind_noun(kind);
            let id = id.to_owned();
            let left = (UNIX_EPOCH + Duration::from_secs(at))
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::spawn(async move {
                tokio::select! {
                    () = tokio::time::sleep(left) => fired.withdraw(format!(
                        "the {noun} {id} it was made with expired at {}", rfc3339(at)
                    )),
                    () = fired.token.cancelled() => {}
                }
            });
        }
        w
    }

    /// Fires the tokens of the credentials of `kind` that `list` (the
    /// relay's new copy) shows revoked, or no longer has.
    pub fn recheck(&self, kind: Kind, list: &[Credential]) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|(k, id), w| {
            if *k != kind || w.token.is_cancelled() {
                return !w.token.is_cancelled();
            }
            let found = list.iter().find(|c| c.id.eq_ignore_ascii_case(id));
            let why = match found.map(|c| c.revoked_at) {
                Some(None) => return true,
                Some(Some(at)) => format!(
                    "the {} {id} it was made with was revoked at {}",
                    kind_noun(kind),
                    rfc3339(at)
                ),
                None => format!(
                    "the {} {id} it was made with is no longer known",
                    kind_noun(kind)
                ),
            };
            w.withdraw(why);
            false
        });
    }
}

fn kind_noun(kind: Kind) -> &'static str {
    match kind {
        Kind::ApiKey => "API key",
        Kind::ClientCert => "client certificate",
        Kind::JoinToken => "join token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::unix_now;

    fn key(id: &str, revoked_at: Option<u64>) -> Credential {
        serde_json::from_value(serde_json::json!({
            "id": id, "tenant": "acme", "secret_sha256": "", "created_at": 0,
            "revoked_at": revoked_at,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_revoked_or_vanished_key_fires_and_one_that_stands_does_not() {
        let standing = Standing::default();
        let a = standing.of(Kind::ApiKey, "aaaa", None);
        let b = standing.of(Kind::ApiKey, "bbbb", None);
        let c = standing.of(Kind::ApiKey, "cccc", None);
        let cert = standing.of(Kind::ClientCert, "aaaa", None);
        standing.recheck(Kind::ApiKey, &[key("aaaa", None), key("bbbb", Some(10))]);
        assert!(!a.token().is_cancelled() && !cert.token().is_cancelled());
        assert!(b.token().is_cancelled() && b.why().contains("revoked at 1970"));
        assert!(c.token().is_cancelled() && c.why().contains("no longer known"));
        // The same credential shares one token.
        assert!(!standing
            .of(Kind::ApiKey, "aaaa", None)
            .token()
            .is_cancelled());
    }

    #[tokio::test]
    async fn a_key_fires_when_it_expires() {
        let standing = Standing::default();
        let soon = standing.of(Kind::ApiKey, "dddd", Some(unix_now() + 1));
        let later = standing.of(Kind::ApiKey, "eeee", Some(unix_now() + 3600));
        tokio::time::timeout(Duration::from_secs(5), soon.token().cancelled())
            .await
            .expect("fired");
        assert!(soon
            .why()
            .contains("API key dddd it was made with expired at"));
        assert!(!later.token().is_cancelled());
    }
}
