//! Errors the relay itself answers a control-plane call with.
//!
//! Each records which side failed, which picks the HTTP status, and whether
//! the call may be retried safely (nothing reached the daemon). The body is
//! Docker-style JSON, `{"message": ...}`, so the `docker` CLI prints one
//! clear sentence.

use http::{Response, StatusCode};

use crate::front::{json_error, Body};

/// Which side of the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client's request is wrong.
    Client,
    /// The request's head has too many header fields.
    HeaderFields,
    /// No or bad credentials.
    Unauthenticated,
    /// A concurrency limit is reached; retry later.
    TooBusy,
    /// No such node (for this client).
    UnknownNode,
    /// The node is known but its agent is not connected.
    NodeOffline,
    /// The agent or its session failed.
    Agent,
    /// The node's Docker daemon is unreachable.
    Daemon,
    /// The relay failed on its own.
    Internal,
}

/// A relay-made error for one call.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct FrontError {
    side: ErrorSource,
    message: String,
}

impl FrontError {
    /// An error from `source` with a sentence for the user.
    pub fn new(side: ErrorSource, message: impl Into<String>) -> Self {
        Self {
            side,
            message: message.into(),
        }
    }

    /// The node id names no node this relay knows.
    pub fn unknown_node(node: &str) -> Self {
        Self::new(
            ErrorSource::UnknownNode,
            format!("no such node: {node:?} is not known to this relay; GET /v1/nodes lists the connected nodes"),
        )
    }

    /// The node enrolled here but its agent is not connected.
    pub fn node_offline(node: &tunnelgate_proto::NodeId) -> Self {
        Self::new(
            ErrorSource::NodeOffline,
            format!("node {node} is offline: its agent is not connected to this relay; check that tunnelgate-agent runs on that host and can reach the relay"),
        )
    }

    /// Which side failed.
    pub fn source_side(&self) -> ErrorSource {
        self.side
    }

    /// Whether retrying cannot repeat an effect: the call never reached
    /// the daemon.
    pub fn is_retry_safe(&self) -> bool {
        !matches!(self.side, ErrorSource::Client | ErrorSource::Internal)
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self.side {
            ErrorSource::Client => StatusCode::BAD_REQUEST,
            ErrorSource::HeaderFields => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorSource::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorSource::TooBusy => StatusCode::TOO_MANY_REQUESTS,
            ErrorSource::UnknownNode => StatusCode::NOT_FOUND,
            ErrorSource::NodeOffline => StatusCode::SERVICE_UNAVAILABLE,
            ErrorSource::Agent | ErrorSource::Daemon => StatusCode::BAD_GATEWAY,
            ErrorSource::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Docker-style JSON response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_error(self.status(), self.message);
        if self.side == ErrorSource::Unauthenticated {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"tunnelgate\""),
            );
        }
        resp
    }
}
