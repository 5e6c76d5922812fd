//! The audit log: one structured line per control-plane call, written when
//! the call is over (its last byte relayed), on the `tunnelgate::audit`
//! tracing target so operators can route it to a file of its own.
//!
//! The line holds who (tenant, principal, role, scope: `*` for the
//! whole tenant), what (node, method, path
//! without the query) and how it went (route, status, bytes, duration). Never the
//! body, the query string or any header: those may carry credentials.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tunnelgate_proto::trace::TraceParent;
use tunnelgate_proto::{NodeId, RequestId};

use crate::auth::Principal;

/// Bytes moved over one stream so far, each way. A call's audit line
/// takes the difference between its start and its end.
#[derive(Debug, Default)]
pub struct StreamBytes {
    /// Sent to the node.
    pub to_node: AtomicU64,
    /// Received from the node.
    pub from_node: AtomicU64,
}

impl StreamBytes {
    /// Both counters now: (to node, from node).
    pub fn now(&self) -> (u64, u64) {
        (
            self.to_node.load(Ordering::Relaxed),
            self.from_node.load(Ordering::Relaxed),
        )
    }
}

/// The tracing target of audit lines.
pub const TARGET: &str = "tunnelgate::audit";

/// One call, as the audit line will show it; the line is written when the
/// last holder drops it (the front, and the call's response body or
/// hijacked pipe if it got one). Everything but the status and the byte
/// counts is known when the record is made.
#[derive(Debug)]
pub struct CallRecord {
    /// The call.
    pub request_id: RequestId,
    /// The call's trace: the client's, or one the relay made.
    pub trace: TraceParent,
    caller: Option<Principal>,
    node: Option<NodeId>,
    method: http::Method,
    path: String,
    status: AtomicU16,
    route: OnceLock<String>,
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
    /// Starts the record of a call that arrived at `started`: `caller` is
    /// `None` when it did not authenticate, `node` when it named none.
    pub fn new(
        request_id: RequestId,
        trace: TraceParent,
        request: &http::request::Parts,
        caller: Option<Principal>,
        node: Option<NodeId>,
        started: Instant,
    ) -> Self {
        Self {
            request_id,
            trace,
            caller,
            node,
            method: request.method.clone(),
            path: request.uri.path().to_owned(),
            status: AtomicU16::new(0),
            route: OnceLock::new(),
            stream: Mutex::new(None),
            started,
        }
    }

    /// Who made the call, once authenticated.
    pub fn caller(&self) -> Option<&Principal> {
        self.caller.as_ref()
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

    /// Records the route that carried the call (`local`, `peer=<id>`).
    pub fn set_route(&self, route: String) {
        let _ = self.route.set(route);
    }

    /// Records the response status.
    pub fn set_status(&self, status: http::StatusCode) {
        self.status.store(status.as_u16(), Ordering::Relaxed);
    }
}

/// Shows a field the call may not have as `-`.
struct OrDash<'a, T>(Option<&'a T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        let (to_node, from_node) = self.bytes();
        tracing::info!(
            target: TARGET,
            request_id = %self.request_id,
            trace_id = %self.trace.trace_hex(),
            tenant = %OrDash(self.caller.as_ref().map(|p| &p.tenant)),
            principal = %OrDash(self.caller.as_ref()),
            role = %OrDash(self.caller.as_ref().map(|p| &p.role)),
            scope = %OrDash(self.caller.as_ref().map(|p| &p.scope)),
            node = %OrDash(self.node.as_ref()),
            route = %OrDash(self.route.get()),
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
