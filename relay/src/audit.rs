//! The audit log: one structured line per control-plane call, written when
//! the call is over (its last byte relayed), on the `tunnelgate::audit`
//! tracing target so operators can route it to a file of its own.
//!
//! The line holds who (tenant, principal), what (node, method, path
//! without the query) and how it went (status, bytes, duration). Never the
//! body, the query string or any header: those may carry credentials.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Instant;

use tunnelgate_proto::RequestId;

/// The tracing target of audit lines.
pub const TARGET: &str = "tunnelgate::audit";

/// One call, as the audit line will show it; the line is written when the
/// last holder drops it (the front, and the call's stream if it got one).
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
    /// Bytes sent to the node.
    pub to_node: AtomicU64,
    /// Bytes received from the node.
    pub from_node: AtomicU64,
    started: Instant,
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
            to_node: AtomicU64::new(0),
            from_node: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Time since the call arrived.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Records the response status.
    pub fn set_status(&self, status: http::StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            tenant = %self.tenant,
            principal = %self.principal,
            node = %self.node,
            method = %self.method,
            path = %self.path,
            status = self.status.load(Ordering::Relaxed),
            bytes_to_node = self.to_node.load(Ordering::Relaxed),
            bytes_from_node = self.from_node.load(Ordering::Relaxed),
            duration_ms = self.elapsed().as_secs_f64() * 1000.0,
            "call"
        );
    }
}
