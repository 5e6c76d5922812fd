//! Messages: the control stream's vocabulary, and the header and reply that
//! open every data stream.
//!
//! Each message is one frame whose payload is a JSON object with a `type`
//! field. JSON keeps the protocol forward compatible for free: unknown
//! fields are skipped, and an unknown `type` decodes to `Unknown` so the
//! state machines can ignore messages from a newer minor version.

use std::collections::BTreeMap;

use bytes::BufMut;
use serde::{Deserialize, Serialize};

use crate::frame::{self, FrameError};
use crate::{NodeId, ProtocolVersion, RelayId, RequestId, TenantId};

/// A message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The payload is not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The frame around it was invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Facts about the node's Docker daemon, as the agent last saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DockerFacts {
    /// Whether the agent could reach a Docker daemon at its endpoint.
    pub reachable: bool,
    /// The engine's version, e.g. `26.1.5`.
    pub version: Option<String>,
    /// The engine's API version, e.g. `1.45`.
    pub api_version: Option<String>,
    /// The engine's operating system and architecture, e.g. `linux/amd64`.
    pub platform: Option<String>,
    /// Why the daemon is unreachable, when it is.
    pub error: Option<String>,
    /// The daemon's ID (`docker info`'s `ID`): a relay going straight to
    /// the node's daemon port uses it only if the daemon there says the same.
    pub id: Option<String>,
}

/// First message from an agent with a node certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the agent speaks.
    pub version: ProtocolVersion,
    /// The agent's own release, for the node list.
    #[serde(default)]
    pub agent_version: String,
    /// The node this agent serves; must match its certificate.
    pub node_id: NodeId,
    /// The host's name.
    #[serde(default)]
    pub hostname: String,
    /// The daemon's state.
    #[serde(default)]
    pub docker: DockerFacts,
    /// Operator-chosen labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the node's own Docker port may be reached directly over
    /// mutual TLS, `tcp://HOST:PORT`; empty when nowhere.
    #[serde(default)]
    pub direct_endpoints: Vec<String>,
    /// The agent's policy (`full`, `read-only` or a file's name); a relay
    /// goes straight to the daemon only for `full`, since the direct path
    /// bypasses the agent's checks. Empty from agents before the direct path.
    #[serde(default)]
    pub policy: String,
}

/// The relay's answer to a [`Hello`] it accepts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the relay speaks.
    pub version: ProtocolVersion,
    /// Which relay holds the session.
    pub relay_id: RelayId,
    /// How often the agent sends a heartbeat.
    pub heartbeat_interval_ms: u64,
    /// When the agent should ask for a fresh node certificate, counted from
    /// this message; the relay knows the lifetime it issued.
    #[serde(default)]
    pub cert_renew_in_ms: Option<u64>,
    /// The cluster's relays as this relay sees them, for an agent that
    /// keeps sessions to several; empty from relays before clusters.
    #[serde(default)]
    pub members: Vec<RelayMember>,
}

/// A relay of the cluster, as agents need to know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMember {
    /// The relay's stable name: what agents hash to choose relays.
    pub relay_id: RelayId,
    /// Where agents reach it, `host:port`.
    pub agent_addr: String,
    /// Shutting down: agents move off it and choose others.
    #[serde(default)]
    pub draining: bool,
}

/// Relay → agent: the cluster's membership changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Every relay, draining ones included.
    pub members: Vec<RelayMember>,
    /// An agent that moves because of this change does so at a random
    /// moment within this window, so the relays it moves to take the
    /// fleet no faster than their handshake budgets allow; 0: the agent's
    /// own default.
    #[serde(default)]
    pub spread_ms: u64,
}

/// Why the relay refused a session or enrolment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// Protocol majors differ.
    IncompatibleVersion,
    /// The join token is unknown, expired or malformed.
    BadToken,
    /// The node id in the message does not match the certificate, or is missing.
    IdentityMismatch,
    /// A message arrived that is not valid at this point.
    ProtocolViolation,
    /// The relay failed on its side.
    Internal,
    /// The node was revoked by an operator; it must enrol again.
    Revoked,
    /// The relay takes no more handshakes now (a reconnect storm): try
    /// another relay, or this one again later ([`Refused::busy`]).
    Busy,
    /// A code from a newer version.
    #[serde(other)]
    Unknown,
}

/// A refusal, sent just before the relay closes the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// What kind of refusal.
    pub code: RefusalCode,
    /// A sentence for the operator: what happened and what to do.
    pub message: String,
    /// With [`RefusalCode::Busy`]: where to go instead, and when to come
    /// back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<BusyHint>,
}

impl Refused {
    /// A refusal with no hint.
    pub fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            busy: None,
        }
    }
}

/// What a busy relay tells the agent it refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusyHint {
    /// The relay that refused.
    pub relay_id: RelayId,
    /// Not before this long from now (the agent adds jitter).
    pub retry_after_ms: u64,
    /// The relay the agent should try now: the next one its own ranking
    /// picks, so the fleet stays spread; `None` outside a cluster.
    pub try_instead: Option<RelayId>,
    /// The cluster's membership, for an agent that has not been welcomed.
    #[serde(default)]
    pub members: Vec<RelayMember>,
}

/// First message from an agent without a node certificate: trade a join
/// token and a certificate signing request for a node certificate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enroll {
    /// The protocol version the agent speaks.
    pub version: ProtocolVersion,
    /// The join token's secret part (never logged).
    pub token: String,
    /// The node id the certificate is for.
    pub node_id: NodeId,
    /// A PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
}

impl std::fmt::Debug for Enroll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enroll")
            .field("version", &self.version)
            .field("token", &"<redacted>")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The relay's answer to a valid [`Enroll`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    /// The node certificate, PEM.
    pub cert_pem: String,
    /// The installation's CA certificate, PEM, to trust from now on.
    pub ca_pem: String,
}

/// Agent → relay, every heartbeat interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Echoed in the ack.
    pub seq: u64,
    /// The round trip the agent measured for the previous heartbeat.
    #[serde(default)]
    pub rtt_us: Option<u64>,
}

/// Relay → agent, answering a [`Heartbeat`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The heartbeat's sequence number.
    pub seq: u64,
}

/// Agent → relay when the node's facts change (e.g. the daemon went away).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUpdate {
    /// The daemon's state now.
    pub docker: DockerFacts,
}

/// Relay → agent: this relay is going away; reconnect (elsewhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Why, for the agent's log.
    pub reason: String,
    /// How long in-flight streams have before the relay closes the session.
    pub grace_ms: u64,
    /// Reconnect at a random moment within this window, so a whole fleet
    /// drained at once arrives no faster than relays take handshakes;
    /// 0 (and relays before this field): at once.
    #[serde(default)]
    pub spread_ms: u64,
    /// The membership with this relay marked draining, so the agent
    /// knows where to go instead; empty outside a cluster.
    #[serde(default)]
    pub members: Vec<RelayMember>,
}

/// Agent → relay: sign a fresh certificate for this session's node, for
/// the key in `csr_pem` (names in the request are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewCert {
    /// A PEM certificate signing request for the agent's new key.
    pub csr_pem: String,
}

/// Relay → agent, answering a [`RenewCert`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRenewed {
    /// The new node certificate, PEM.
    pub cert_pem: String,
    /// When to renew again, counted from this message.
    #[serde(default)]
    pub renew_in_ms: Option<u64>,
}

/// Agent → relay, as the first message of a connection made for this
/// alone (`docker-tls`, and the running agent's renewals): sign a server
/// certificate for this node's Docker daemon, for the key in `csr_pem`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignDaemonCert {
    /// A PEM certificate signing request for the daemon's key, made on
    /// the host (names in the request are ignored).
    pub csr_pem: String,
    /// DNS names the daemon is reached by.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// IP addresses the daemon is reached by.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

/// Relay → agent, answering a [`SignDaemonCert`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonCertSigned {
    /// The daemon's server certificate, PEM.
    pub cert_pem: String,
    /// The CA the daemon must verify clients with (`--tlscacert`): it
    /// signs relays' direct-path certificates and nothing else.
    pub client_ca_pem: String,
    /// When to renew, counted from this message.
    #[serde(default)]
    pub renew_in_ms: Option<u64>,
}

/// Agent → relay, as the first message of a connection made for this
/// alone: the node is being removed from its host (`install.sh --purge`);
/// revoke it, so its certificate is refused everywhere from now on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    /// Why, for the relay's log.
    #[serde(default)]
    pub reason: String,
}

/// Relay → agent, answering a [`Leave`]: the node is revoked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// The node that was revoked.
    pub node_id: NodeId,
}

/// Everything that travels on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)] // each variant is its payload type's namesake
pub enum ControlMessage {
    Hello(Hello),
    Welcome(Welcome),
    Refused(Refused),
    Enroll(Enroll),
    Enrolled(Enrolled),
    Heartbeat(Heartbeat),
    HeartbeatAck(HeartbeatAck),
    NodeUpdate(NodeUpdate),
    Drain(Drain),
    Members(Members),
    RenewCert(RenewCert),
    CertRenewed(CertRenewed),
    SignDaemonCert(SignDaemonCert),
    DaemonCertSigned(DaemonCertSigned),
    Leave(Leave),
    Left(Left),
    /// A message type from a newer minor version; receivers ignore it.
    #[serde(other)]
    Unknown,
}

/// What a data stream carries once accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// HTTP/1.1 to the node's Docker daemon, and whatever it upgrades to.
    DockerHttp,
    /// A kind from a newer version, which this side cannot serve.
    #[serde(other)]
    Unknown,
}

/// The relay's first frame on every data stream it opens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "stream_header")]
pub struct StreamHeader {
    /// The protocol version the relay speaks.
    pub version: ProtocolVersion,
    /// What the stream is for.
    pub kind: StreamKind,
    /// The call this stream carries, for both sides' logs.
    pub request_id: RequestId,
    /// The node the relay meant to reach.
    pub node_id: NodeId,
    /// W3C trace context of the call, if the client sent one.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// A relay's first frame on a stream to a peer relay: carry this call to
/// the node's session you hold. The sending relay has authenticated and
/// authorized the caller; the receiving one trusts this header only
/// because the connection is authenticated as a relay's. After it the
/// stream is exactly an agent stream: the agent's reply, then HTTP/1.1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "peer_header")]
pub struct PeerHeader {
    /// The protocol version the sending relay speaks.
    pub version: ProtocolVersion,
    /// What the stream is for.
    pub kind: StreamKind,
    /// The call, for every side's logs.
    pub request_id: RequestId,
    /// The node's tenant: the caller's, as the sending relay checked.
    pub tenant: TenantId,
    /// The node.
    pub node_id: NodeId,
    /// W3C trace context of the call, if the client sent one.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// Why an agent refused a data stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamErrorCode {
    /// The agent could not connect to its Docker daemon.
    DaemonUnreachable,
    /// The agent does not serve this stream kind.
    UnsupportedKind,
    /// Protocol majors differ.
    IncompatibleVersion,
    /// The header names another node.
    WrongNode,
    /// A peer relay holds no session of the node (it moved or dropped).
    NodeNotHere,
    /// A code from a newer version.
    #[serde(other)]
    Unknown,
}

/// The agent's answer to a [`StreamHeader`]; after `Accept` the stream is a
/// plain byte pipe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamReply {
    /// Bytes may flow.
    Accept,
    /// The stream is refused; the agent closes it after this frame.
    Error {
        /// What went wrong.
        code: StreamErrorCode,
        /// A sentence for the operator.
        message: String,
    },
}

/// Encoding and decoding shared by every message type.
pub trait Message: Serialize + for<'de> Deserialize<'de> {
    /// Appends the message as one frame.
    fn encode_frame(&self, max: usize, dst: &mut impl BufMut) -> Result<(), MessageError> {
        let payload = serde_json::to_vec(self)?;
        frame::encode(&payload, max, dst)?;
        Ok(())
    }

    /// Decodes a frame's payload.
    fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

impl Message for ControlMessage {}
impl Message for StreamHeader {}
impl Message for PeerHeader {}
impl Message for StreamReply {}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    fn node(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(msg: M) {
        let mut buf = BytesMut::new();
        msg.encode_frame(frame::DEFAULT_MAX_FRAME, &mut buf)
            .unwrap();
        let payload = frame::decode(&mut buf, frame::DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(M::decode(&payload).unwrap(), msg);
    }

    #[test]
    fn unknown_fields_and_types_are_tolerated() {
        let hb = br#"{"type":"heartbeat","seq":3,"rtt_us":10,"from_the_future":[1,2]}"#;
        assert_eq!(
            ControlMessage::decode(hb).unwrap(),
            ControlMessage::Heartbeat(Heartbeat {
                seq: 3,
                rtt_us: Some(10)
            })
        );
        let future = br#"{"type":"teleport","to":"mars"}"#;
        assert_eq!(
            ControlMessage::decode(future).unwrap(),
            ControlMessage::Unknown
        );
        let kind = br#"{"type":"stream_header","version":{"major":1,"minor":9},"kind":"ssh","request_id":1,"node_id":"n"}"#;
        assert_eq!(
            StreamHeader::decode(kind).unwrap().kind,
            StreamKind::Unknown
        );
    }

    #[test]
    fn invalid_node_ids_are_malformed_messages() {
        let bad = br#"{"type":"stream_header","version":{"major":1,"minor":0},"kind":"docker_http","request_id":1,"node_id":"../x"}"#;
        assert!(matches!(
            StreamHeader::decode(bad),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn enroll_debug_hides_the_token() {
        let e = Enroll {
            version: ProtocolVersion::CURRENT,
            token: "s3cret".into(),
            node_id: node("n1"),
            csr_pem: String::new(),
        };
        assert!(!format!("{e:?}").contains("s3cret"));
    }

    #[test]
    fn messages_round_trip() {
        round_trip(ControlMessage::Drain(Drain {
            reason: "restart".into(),
            grace_ms: 5,
            spread_ms: 20_000,
            members: vec![RelayMember {
                relay_id: RelayId::new("relay-b").unwrap(),
                agent_addr: "10.0.0.2:7443".into(),
                draining: false,
            }],
        }));
        round_trip(ControlMessage::Members(Members {
            members: vec![],
            spread_ms: 7,
        }));
        round_trip(StreamReply::Error {
            code: StreamErrorCode::DaemonUnreachable,
            message: "no daemon".into(),
        });
        round_trip(StreamReply::Accept);
    }

    fn arb_facts() -> impl Strategy<Value = DockerFacts> {
        (
            any::<bool>(),
            proptest::option::of(".{0,20}"),
            proptest::option::of(".{0,20}"),
        )
            .prop_map(|(reachable, version, error)| DockerFacts {
                reachable,
                version,
                error,
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn hello_round_trips(id in "[a-z0-9][a-z0-9.-]{0,40}", hostname in ".{0,40}", docker in arb_facts(),
                             labels in prop::collection::btree_map(".{0,8}", ".{0,8}", 0..4)) {
            round_trip(ControlMessage::Hello(Hello {
                version: ProtocolVersion::CURRENT,
                agent_version: "0.1.0".into(),
                node_id: node(&id),
                hostname,
                docker,
                labels,
                direct_endpoints: vec!["tcp://10.0.0.5:2376".into()],
                policy: "full".into(),
            }));
        }

        #[test]
        fn header_round_trips(id in "[a-z0-9][a-z0-9._-]{0,40}", rid in any::<u64>(), tp in proptest::option::of("[0-9a-f-]{0,55}")) {
            round_trip(StreamHeader {
                version: ProtocolVersion::CURRENT,
                kind: StreamKind::DockerHttp,
                request_id: RequestId(rid),
                node_id: node(&id),
                traceparent: tp,
            });
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = ControlMessage::decode(&bytes);
            let _ = StreamHeader::decode(&bytes);
            let _ = StreamReply::decode(&bytes);
        }

        #[test]
        fn truncated_messages_are_errors_not_panics(cut in 0usize..200) {
            let msg = ControlMessage::Welcome(Welcome { version: ProtocolVersion::CURRENT, relay_id: RelayId::new("relay-a").unwrap(), heartbeat_interval_ms: 5000, cert_renew_in_ms: None, members: vec![] });
            let payload = serde_json::to_vec(&msg).unwrap();
            let cut = cut.min(payload.len().saturating_sub(1));
            prop_assert!(ControlMessage::decode(&payload[..cut]).is_err());
        }
    }
}
