//! Errors the relay itself answers a control-plane call with: one variant
//! per cause, each saying what happened and what to do.
//!
//! Each cause knows which side failed ([`ErrorSource`]), which picks the
//! HTTP status, and whether retrying on another route is safe (nothing
//! reached the daemon). The body is Docker-style JSON, `{"message": ...}`,
//! so the `docker` CLI prints one clear sentence.

use std::time::Duration;

use http::{Response, StatusCode};
use tunnelgate_proto::message::StreamErrorCode;
use tunnelgate_proto::{NodeId, TenantId};

use crate::metrics::Limit;
use crate::respond::{docker_error, Body};
use crate::state::credentials::Refusal;

/// Which side of the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client's request is wrong, unauthenticated or over a limit.
    Client,
    /// The node's agent or its session failed (or it is not connected).
    Agent,
    /// The node's Docker daemon failed.
    Daemon,
    /// Another relay failed.
    Peer,
    /// The relay failed on its own.
    Internal,
}

const HOW_TO_AUTHENTICATE: &str =
    "present a client certificate from `tunnelgate-relay client-cert create` \
     (DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=DIR) or an API key from \
     `tunnelgate-relay api-key create` as `Authorization: Bearer <key>` \
     (HttpHeaders in the docker CLI's config.json)";

/// Why a call's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// `Authorization` is not `Bearer <key>`.
    #[error("the Authorization header must be `Bearer <API key>`; {HOW_TO_AUTHENTICATE}")]
    BadScheme,
    /// The API key is refused.
    #[error("authentication failed: {0}")]
    BadApiKey(Refusal),
    /// A TLS certificate that is not a client certificate (e.g. a node's).
    /// The client certificate was revoked.
    #[error("authentication failed: {0}")]
    RevokedCert(Refusal),
    #[error("the TLS client certificate is not a control-plane client certificate (node certificates cannot call the API); {HOW_TO_AUTHENTICATE}")]
    NotAClientCert,
    /// No credentials where the relay requires them.
    #[error("authentication required: {HOW_TO_AUTHENTICATE}")]
    Missing,
}

impl AuthFailure {
    /// The `reason` label of `tunnelgate_front_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadScheme => "bad_scheme",
            Self::BadApiKey(_) => "bad_api_key",
            Self::RevokedCert(_) => "revoked_cert",
            Self::NotAClientCert => "not_a_client_cert",
            Self::Missing => "missing",
        }
    }
}

/// What a concurrency limit counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusyScope {
    /// A node's calls.
    Node(NodeId),
    /// A tenant's calls.
    Tenant(TenantId),
}

impl std::fmt::Display for BusyScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "node {n}"),
            Self::Tenant(t) => write!(f, "tenant {t}"),
        }
    }
}

/// Why the agent's answer to a new stream never came, or was not an accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// The agent refused the stream.
    #[error("refused the call ({code:?}): {message}")]
    Refused {
        /// Why, as a code.
        code: StreamErrorCode,
        /// Why, for the user.
        message: String,
    },
    /// The agent did not answer in time.
    #[error("did not answer within {0:?}")]
    Silent(Duration),
    /// The agent's answer was not a stream reply.
    #[error("sent an invalid stream reply: {0}")]
    Invalid(String),
    /// The stream ended before the agent answered.
    #[error("closed the stream before answering")]
    Closed,
}

/// A relay-made error for one call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Dot-segments or encoded separators in the path.
    #[error("the request path holds dot-segments ('.', '..') or encoded separators (%2F, %5C, %00), \
             which the relay refuses; send the plain path, e.g. /nodes/<node-id>/v1.45/containers/json")]
    UnsafePath,
    /// The path cannot be a request target once the node prefix is off.
    #[error("invalid request path: {0}")]
    InvalidPath(#[source] http::uri::InvalidUri),
    /// A path the relay does not serve.
    #[error("no such endpoint {0}; Docker API calls go to /nodes/<node-id>/... (or /fleet/... for a read-only view of every node), the node list is at /v1/nodes, events at /v1/events")]
    NoSuchEndpoint(String),
    /// A method the relay's own API does not take on that path.
    #[error("wrong method: /v1/nodes and /v1/events take GET, /v1/tokens takes POST")]
    MethodNotAllowed,
    /// More header fields than `max_headers`.
    #[error(
        "the request has {count} header fields; the relay accepts at most {max} (max_headers)"
    )]
    TooManyHeaders {
        /// How many the request has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// No or bad credentials.
    #[error(transparent)]
    Unauthenticated(AuthFailure),
    /// An API key id the caller's tenant has none of.
    #[error("no API key {0} in this tenant; GET /v1/keys lists them")]
    NoSuchKey(String),
    /// The caller's role does not allow the call.
    #[error(transparent)]
    Forbidden(#[from] crate::authz::Denied),
    /// Over TLS, the server name and the `Host` header name different
    /// endpoints under the node domain.
    #[error("the TLS server name {server_name:?} and the Host header {host:?} name different endpoints; connect to the host name you call (DOCKER_HOST=tcp://NODE.DOMAIN:PORT) and send no Host of your own")]
    Misdirected {
        /// The name the client asked for in its TLS handshake.
        server_name: String,
        /// The `Host` it sent.
        host: String,
    },
    /// A scoped caller asked for what would reach past its scope.
    #[error(
        "{who} may see only the nodes {scope}: {what}; an admin of the tenant without a scope can"
    )]
    OutOfScope {
        /// The caller, as the audit line names it.
        who: String,
        /// Its scope.
        scope: crate::scope::Scope,
        /// What it asked for, and how to stay in scope.
        what: String,
    },
    /// A concurrency limit is reached.
    #[error("{scope} already has {max} calls in flight (max_{}); retry when some have finished", limit.as_str())]
    TooBusy {
        /// Whose calls.
        scope: BusyScope,
        /// Which limit.
        limit: Limit,
        /// Its value.
        max: usize,
    },
    /// No such node for this caller (another tenant's answers the same).
    #[error(
        "no such node: {0:?} is not known to this relay; GET /v1/nodes lists the connected nodes"
    )]
    UnknownNode(String),
    /// The node is enrolled but its agent is not connected.
    #[error("node {0} is offline: its agent is not connected to this relay; check that tunnelgate-agent runs on that host and can reach the relay")]
    NodeOffline(NodeId),
    /// The node's session could not open a stream.
    #[error("node {node}'s session failed: {source}")]
    SessionFailed {
        /// The node.
        node: NodeId,
        /// Why.
        source: tunnelgate_session::SessionError,
    },
    /// The stream header could not be written.
    #[error("node {node}'s agent did not take the call: {source}")]
    HeaderNotSent {
        /// The node.
        node: NodeId,
        /// Why.
        source: tunnelgate_session::StreamError,
    },
    /// Opening the stream took too long.
    #[error("node {node}'s agent did not take the call within {timeout:?}")]
    SetupTimeout {
        /// The node.
        node: NodeId,
        /// The limit.
        timeout: Duration,
    },
    /// The agent cannot reach its daemon.
    #[error("node {node}: the Docker daemon is unreachable: {message}")]
    DaemonUnreachable {
        /// The node.
        node: NodeId,
        /// The agent's words.
        message: String,
    },
    /// The agent answered the stream with something but an accept.
    #[error("node {node}'s agent {source}")]
    Setup {
        /// The node.
        node: NodeId,
        /// What it answered.
        source: SetupError,
    },
    /// The request never left: the stream was gone before it took it.
    #[error("node {node}: the stream closed before the call was sent: {source}")]
    NotSent {
        /// The node.
        node: NodeId,
        /// Why.
        source: hyper::Error,
    },
    /// The call was sent and no response came.
    #[error("node {node}: the call failed before the daemon answered: {source}")]
    NoAnswer {
        /// The node.
        node: NodeId,
        /// Why.
        source: hyper::Error,
    },
    /// One of the relay's own event streams was sent and no response
    /// head came ([`crate::upstream::lean`]).
    #[error("node {node}: the call failed before the daemon answered: {source}")]
    Unanswered {
        /// The node.
        node: NodeId,
        /// Why (the lean client's own error, boxed so that this module
        /// names nothing above it).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The peer relay that holds the node's session cannot be reached.
    #[error("the call to this node goes through relay {relay}, which cannot be reached: {reason}; retry, or call a relay that holds the node (GET /v1/nodes on each)")]
    PeerUnreachable {
        /// The peer.
        relay: tunnelgate_proto::RelayId,
        /// What failed.
        reason: String,
    },
    /// The peer's connection failed while opening the call's stream.
    #[error("relay {relay}, which holds node {node}, failed: {source}")]
    PeerFailed {
        /// The peer.
        relay: tunnelgate_proto::RelayId,
        /// The node.
        node: NodeId,
        /// Why.
        source: tunnelgate_session::SessionError,
    },
    /// 101 to a request that did not ask to upgrade.
    /// The node's daemon port could not be used for this call; nothing
    /// was sent.
    #[error("node {node}: the direct path to {endpoint} failed: {reason}")]
    DirectFailed {
        /// The node.
        node: NodeId,
        /// The endpoint it advertised.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    #[error("the daemon switched protocols on a request that did not ask to upgrade")]
    UnaskedUpgrade,
    /// A call carried by a peer relay failed there.
    #[error("through relay {relay}: {source}")]
    ThroughPeer {
        /// The peer that carried the call.
        relay: tunnelgate_proto::RelayId,
        /// What failed.
        source: Box<CallError>,
    },
    /// A fleet endpoint path the relay does not serve.
    #[error("the fleet endpoint does not serve {0}; send it to one node: DOCKER_HOST=tcp://RELAY:7375/nodes/<node-id>")]
    FleetUnsupported(String),
    /// A container the fleet has nowhere (Docker's own words).
    #[error("No such container: {0}")]
    FleetName(String),
    /// An image no node of the fleet that can take calls has (Docker's
    /// own words, so a client pulls it).
    #[error("No such image: {0}")]
    FleetNoImage(String),
    /// An exec instance no node of the fleet made (Docker's own words).
    #[error("No such exec instance: {0}")]
    FleetNoExec(String),
    /// A name or id prefix that fits containers on several nodes.
    #[error("{name:?} names containers on several nodes ({nodes}); name it <node-id>/<name> or by its full id")]
    FleetAmbiguous {
        /// As the caller gave it.
        name: String,
        /// Where it fits.
        nodes: String,
    },
    /// A create whose name is taken somewhere in the fleet.
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\" on node {node}. You have to remove (or rename) that container to be able to reuse that name.")]
    FleetNameTaken {
        /// The name.
        name: String,
        /// The container that has it.
        id: String,
        /// Its node.
        node: NodeId,
    },
    /// A create the fleet cannot read.
    #[error("{0}")]
    FleetAsk(#[from] crate::fleet::ask::AskError),
    /// No node fits a create: what ruled each out.
    #[error("{0}")]
    FleetNoNode(#[from] crate::fleet::NoNode),
    /// A node's answer to a call the relay made for a fleet view failed.
    #[error("node {node}: {reason}")]
    FleetAnswer {
        /// The node.
        node: NodeId,
        /// The node's status, when it answered.
        status: Option<StatusCode>,
        /// What failed.
        reason: String,
    },
    /// A query parameter the relay cannot use.
    #[error("{0}")]
    BadQuery(String),
    /// The records could not be written.
    #[error("cannot store the record ({0}); see the relay's log, and retry")]
    Records(String),
    /// The client's request body could not be read.
    #[error("reading the request body failed: {0}; send the call again")]
    RequestBody(#[source] hyper::Error),
    /// HTTP could not start on a new stream.
    #[error("cannot start HTTP on the stream: {0}")]
    Http(#[source] hyper::Error),
}

impl CallError {
    /// Which side failed.
    pub fn source_side(&self) -> ErrorSource {
        match self {
            Self::UnsafePath
            | Self::InvalidPath(_)
            | Self::NoSuchEndpoint(_)
            | Self::MethodNotAllowed
            | Self::TooManyHeaders { .. }
            | Self::Unauthenticated(_)
            | Self::Forbidden(_)
            | Self::OutOfScope { .. }
            | Self::Misdirected { .. }
            | Self::NoSuchKey(_)
            | Self::TooBusy { .. }
            | Self::RequestBody(_)
            | Self::FleetUnsupported(_)
            | Self::FleetName(_)
            | Self::FleetNoExec(_)
            | Self::FleetNoImage(_)
            | Self::FleetAmbiguous { .. }
            | Self::FleetNameTaken { .. }
            | Self::FleetAsk(_)
            | Self::FleetNoNode(_)
            | Self::BadQuery(_)
            | Self::UnknownNode(_) => ErrorSource::Client,
            Self::NodeOffline(_)
            | Self::SessionFailed { .. }
            | Self::HeaderNotSent { .. }
            | Self::SetupTimeout { .. }
            | Self::Setup { .. }
            | Self::NotSent { .. }
            | Self::NoAnswer { .. }
            | Self::Unanswered { .. }
            | Self::FleetAnswer { .. } => ErrorSource::Agent,
            Self::DaemonUnreachable { .. } | Self::UnaskedUpgrade | Self::DirectFailed { .. } => {
                ErrorSource::Daemon
            }
            Self::PeerUnreachable { .. } | Self::PeerFailed { .. } => ErrorSource::Peer,
            Self::ThroughPeer { source, .. } => source.source_side(),
            Self::Http(_) | Self::Records(_) => ErrorSource::Internal,
        }
    }

    /// Whether the call may go again on another route without repeating
    /// an effect: it is known that no byte of it reached the daemon.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            Self::NodeOffline(_)
            | Self::SessionFailed { .. }
            | Self::HeaderNotSent { .. }
            | Self::DaemonUnreachable { .. }
            | Self::PeerUnreachable { .. }
            | Self::PeerFailed { .. }
            | Self::DirectFailed { .. }
            | Self::NotSent { .. } => true,
            // The agent answers before it lets a byte through: a refusal
            // or a stream closed unanswered means nothing went on.
            Self::Setup { source, .. } => {
                matches!(source, SetupError::Refused { .. } | SetupError::Closed)
            }
            Self::ThroughPeer { source, .. } => source.is_retry_safe(),
            _ => false,
        }
    }

    /// Whether another route may do better: retry-safe, and not a fault
    /// every route shares (the node's daemon is the same on each).
    pub fn worth_another_route(&self) -> bool {
        match self {
            Self::DaemonUnreachable { .. } => false,
            Self::ThroughPeer { source, .. } => source.worth_another_route(),
            other => other.is_retry_safe(),
        }
    }

    /// This error as the caller of a call carried by `relay` sees it:
    /// naming the relay, unless it already does.
    pub fn through_peer(self, relay: &tunnelgate_proto::RelayId) -> Self {
        match self {
            Self::PeerUnreachable { .. } | Self::PeerFailed { .. } | Self::ThroughPeer { .. } => {
                self
            }
            other => Self::ThroughPeer {
                relay: relay.clone(),
                source: Box::new(other),
            },
        }
    }

    /// The status a node answered a call the relay made itself with.
    pub fn node_status(&self) -> Option<StatusCode> {
        match self {
            Self::FleetAnswer { status, .. } => *status,
            _ => None,
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsafePath | Self::InvalidPath(_) | Self::RequestBody(_) | Self::BadQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::ThroughPeer { source, .. } => source.status(),
            Self::NoSuchEndpoint(_)
            | Self::UnknownNode(_)
            | Self::FleetUnsupported(_)
            | Self::FleetNoExec(_)
            | Self::FleetNoImage(_)
            | Self::FleetName(_)
            | Self::NoSuchKey(_) => StatusCode::NOT_FOUND,
            Self::FleetAmbiguous { .. } | Self::FleetAsk(_) => StatusCode::BAD_REQUEST,
            Self::FleetNameTaken { .. } | Self::FleetNoNode(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::OutOfScope { .. } => StatusCode::FORBIDDEN,
            Self::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            Self::TooBusy { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NodeOffline(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => match self.source_side() {
                ErrorSource::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    /// The Docker-style JSON response.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = docker_error(self.status(), &self.to_string());
        if let Self::Unauthenticated(_) = self {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"tunnelgate\""),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::new("n1").unwrap()
    }

    #[test]
    fn each_cause_picks_its_status_and_side() {
        let cases = [
            (CallError::UnsafePath, 400, ErrorSource::Client),
            (CallError::UnknownNode("x".into()), 404, ErrorSource::Client),
            (
                CallError::Unauthenticated(AuthFailure::Missing),
                401,
                ErrorSource::Client,
            ),
            (CallError::NodeOffline(node()), 503, ErrorSource::Agent),
            (
                CallError::DaemonUnreachable {
                    node: node(),
                    message: "down".into(),
                },
                502,
                ErrorSource::Daemon,
            ),
            (
                CallError::Setup {
                    node: node(),
                    source: SetupError::Silent(Duration::from_secs(1)),
                },
                502,
                ErrorSource::Agent,
            ),
        ];
        for (err, status, side) in cases {
            assert_eq!(
                (err.status().as_u16(), err.source_side()),
                (status, side),
                "{err}"
            );
        }
    }

    #[test]
    fn only_causes_that_stopped_before_the_daemon_are_retry_safe() {
        let refused = SetupError::Refused {
            code: StreamErrorCode::DaemonUnreachable,
            message: "no".into(),
        };
        assert!(CallError::Setup {
            node: node(),
            source: refused
        }
        .is_retry_safe());
        assert!(CallError::NodeOffline(node()).is_retry_safe());
        let silent = SetupError::Silent(Duration::from_secs(15));
        assert!(
            !CallError::Setup {
                node: node(),
                source: silent
            }
            .is_retry_safe(),
            "a silent agent may have let the call through late"
        );
        assert!(!CallError::UnaskedUpgrade.is_retry_safe());
        assert!(!CallError::UnsafePath.is_retry_safe());
    }
}
