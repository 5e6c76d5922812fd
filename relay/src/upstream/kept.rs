//! The node stream a client connection's last call went over, kept so the
//! connection's next call to the same node skips the stream setup: no new
//! stream, no new daemon connection at the agent, no HTTP handshake. This
//! is what makes a kept-alive `docker` client's calls cheap. Upgraded
//! calls never leave their stream behind; the stream closes with the
//! client connection.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use tunnelgate_proto::{NodeKey, RelayId};

use crate::audit::StreamBytes;
use crate::net::{ConnFuture, ConnTasks};
use crate::sessions::SessionId;

/// What carries a kept stream: a node's daemon port, a session of this
/// relay, or the connection to a peer relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Carrier {
    /// A node's daemon port, by its advertised URL.
    Direct(String),
    Session(SessionId),
    Peer(RelayId),
}

/// The body a call sends: the client's, streamed, or a small one read in
/// full so the call can go again on another route.
pub type CallBody =
    http_body_util::Either<hyper::body::Incoming, http_body_util::Full<bytes::Bytes>>;

/// The HTTP/1.1 client end of one stream to a node, with its byte counts.
pub(super) struct NodeConn {
    pub(super) sender: hyper::client::conn::http1::SendRequest<CallBody>,
    pub(super) bytes: Arc<StreamBytes>,
}

/// How long a kept stream may take to finish its previous call before a
/// new stream is opened instead. Calls on one client connection come one
/// after another, so the wait is normally nil.
const KEPT_STREAM_WAIT: Duration = Duration::from_millis(100);

/// One client connection's kept stream, if any, and where its node
/// streams are driven.
#[derive(Default)]
pub struct KeptStream {
    kept: Mutex<Option<Kept>>,
    /// The client connection's own task; none for the relay's own calls.
    tasks: Option<ConnTasks>,
}

struct Kept {
    key: NodeKey,
    carrier: Carrier,
    conn: NodeConn,
}

impl std::fmt::Debug for KeptStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptStream").finish_non_exhaustive()
    }
}

impl KeptStream {
    /// The kept stream of a client connection whose node streams are
    /// driven on its own task, through `tasks`.
    pub fn on(tasks: ConnTasks) -> Self {
        Self {
            kept: Mutex::default(),
            tasks: Some(tasks),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives a node stream's connection on the client connection's task;
    /// hands it back when there is none.
    pub(super) fn drive(&self, conn: ConnFuture) -> Result<(), ConnFuture> {
        match &self.tasks {
            Some(tasks) => tasks.run(conn),
            None => Err(conn),
        }
    }

    /// The kept stream, if it goes to `key` over that very `carrier` and
    /// is free for another call. The lock is let go before waiting.
    pub(super) async fn take(&self, key: &NodeKey, carrier: &Carrier) -> Option<NodeConn> {
        let kept = self.slot().take()?;
        if kept.key != *key || kept.carrier != *carrier {
            return None;
        }
        let mut conn = kept.conn;
        let free = {
            let mut ready = std::pin::pin!(conn.sender.ready());
            // Almost always free at once: then no timer is armed for it.
            match std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx))).await {
                Poll::Ready(done) => done.is_ok(),
                Poll::Pending => matches!(
                    tokio::time::timeout(KEPT_STREAM_WAIT, ready).await,
                    Ok(Ok(()))
                ),
            }
        };
        free.then_some(conn)
    }

    /// Keeps `conn`, a stream to `key` over `carrier`, for the next call.
    pub(super) fn keep(&self, key: &NodeKey, carrier: Carrier, conn: NodeConn) {
        *self.slot() = Some(Kept {
            key: key.clone(),
            carrier,
            conn,
        });
    }
}
