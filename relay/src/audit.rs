//! The audit log: one structured line per control-plane call, written when
//! the call is over (its last byte relayed), on the `tunnelgate::audit`
//! tracing target so operators can route it to a file of its own.
//!
//! The line holds who (tenant, principal), what (node, method, path
//! without the query) and how it went (status, bytes, duration). Never the
//! body, the query string or any header: those may carry credentials.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tunnelgate_proto::RequestId;

use crate::io::StreamBytes;

/// The tracing target of audit lines.
pub const TARGET: &str = "tunnelgate::audit";

/// One call, as the audit line will show it; the line is written when the
/// last holder drops it (the front, and the call's response body or
/// hijacked pipe if it got one).
#[derive(Debug)]
pub struct CallRecord {
    /// The call.
    pub request_id: RequestId,
    /// The caller's tenant, `-` if not authenticated.
    pub tenant: String,
    /// Who called: client certificate name, API key id, or `local`.
    pub principal: String,
    /// The node addressed, `-` if none.
    pub node: String,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The response status; 0 until known.
    pub status: AtomicU16,
    stream: Mutex<Option<Tap>>,
    started: Instant,
}

/// The stream a call went over, and its byte counts when the call started
/// on it.
#[derive(Debug)]
struct Tap {
    stream: Arc<StreamBytes>,
    at_start: (u64, u64),
}

impl CallRecord {
    /// Starts the record of a call that arrived now.
    pub fn new(request_id: RequestId, method: &str, path: &str) -> Self {
        Self {
            request_id,
            tenant: "-".into(),
            principal: "-".into(),
            node: "-".into(),
            method: method.to_owned(),
            path: path.to_owned(),
            status: AtomicU16::new(0),
            stream: Mutex::new(None),
            started: Instant::now(),
        }
    }

    /// Time since the call arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Counts the bytes that `stream` moves from now on as this call's.
    pub fn count_on(&self, stream: &Arc<StreamBytes>) {
        let mut slot = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Tap {
            stream: stream.clone(),
            at_start: stream.now(),
        });
    }

    /// Bytes moved for this call so far: (to node, from node).
    pub fn bytes(&self) -> (u64, u64) {
        let slot = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map_or((0, 0), |tap| {
            let (to, from) = tap.stream.now();
            (to - tap.at_start.0, from - tap.at_start.1)
        })
    }

    /// Records the response status.
    pub fn set_status(&self, status: http::StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let (to_node, from_node) = self.bytes();
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            tenant = %self.tenant,
            principal = %self.principal,
            node = %self.node,
            method = %self.method,
            path = %self.path,
            status = self.status.load(Ordering::Relaxed),
            bytes_to_node = to_node,
            bytes_from_node = from_node,
            duration_ms = self.elapsed().as_secs_f64() * 1000.0,
            "call"
        );
    }
}
