//! Why the agent stopped or a session ended: one variant per cause, each
//! saying what happened and what to do. [`AgentError::is_fatal`] tells
//! the causes that retrying cannot cure (the setup is wrong) from those
//! that a reconnect may (the network, the relay).

use std::path::PathBuf;
use std::time::Duration;

use tunnelgate_proto::NodeId;
use tunnelgate_session::tls::TlsError;

/// Why the agent stopped or a session ended.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    // === Setup: retrying cannot help ===
    /// A state file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadState {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A state file or directory could not be written.
    #[error("cannot write {path}: {source}")]
    WriteState {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The relay enrolled the node but its certificate could not be kept.
    #[error(
        "the relay enrolled node {node}, but its certificate could not be saved to {path}: \
         {source}; fix the state dir and start the agent again within 10 minutes: it asks \
         again with the same key, which the join token still answers"
    )]
    EnrolledUnsaved {
        /// `--node-id`.
        node: NodeId,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The stored identity cannot be used.
    #[error("the node certificate in {dir} is unusable ({source}); remove the directory and enrol again with a new token")]
    CorruptIdentity {
        /// The state dir.
        dir: PathBuf,
        /// What is wrong.
        source: TlsError,
    },
    /// The stored certificate names another node.
    #[error("the stored node certificate is for node {certified}, but this agent is configured as {configured}; use the matching --node-id or another --state-dir")]
    WrongNode {
        /// The node the certificate is for, or `<none>`.
        certified: String,
        /// `--node-id`.
        configured: NodeId,
    },
    /// The relay sent a certificate for another key.
    #[error("the certificate from the relay is not for this agent's key")]
    ForeignCertificate,
    /// No identity and nothing to enrol with.
    #[error("{0} holds no node certificate and no --token was given; create one on the relay with `tunnelgate-relay token create` and pass it with --token")]
    NoToken(PathBuf),
    /// The join token is not one.
    #[error("the join token is malformed; copy the whole line printed by `tunnelgate-relay token create`")]
    MalformedToken,
    /// The relay refused the enrolment (bad, expired or used-up token, ...).
    #[error("enrolment refused: {0}")]
    EnrolRefused(String),
    /// The relay refused a request (a daemon certificate for names it
    /// cannot certify, a node it cannot revoke, ...).
    #[error("refused by the relay: {0}")]
    ErrandRefused(String),
    /// A request to the relay got no answer.
    #[error("no answer: {0}")]
    Errand(String),
    /// A key or certificate request could not be made.
    #[error("cannot make a key or certificate request: {0}")]
    Key(#[from] rcgen::Error),
    /// The TLS settings cannot be built from the stored material.
    #[error("TLS settings: {0}")]
    Tls(#[source] TlsError),
    /// The QUIC settings cannot be built from the TLS settings.
    #[error("QUIC settings: {0}")]
    QuicConfig(#[source] std::io::Error),

    // === The network or the relay: the agent reconnects ===
    /// The relay's name does not resolve.
    #[error("cannot resolve relay address {relay}: {source}")]
    Resolve {
        /// `--relay`.
        relay: String,
        /// Why.
        source: std::io::Error,
    },
    /// The relay's name resolves to no address.
    #[error("relay address {0} resolves to nothing")]
    NoAddress(String),
    /// No UDP socket for QUIC.
    #[error("cannot open a UDP socket: {0}")]
    UdpSocket(#[source] std::io::Error),
    /// QUIC could not start a connection.
    #[error("cannot dial {relay}: {source}")]
    QuicDial {
        /// `--relay`.
        relay: String,
        /// Why.
        source: quinn::ConnectError,
    },
    /// No QUIC answer in time.
    #[error("no QUIC answer from {relay} within {timeout:?}; is UDP to the relay blocked?")]
    QuicSilent {
        /// `--relay`.
        relay: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The QUIC handshake failed.
    #[error("QUIC handshake with {relay} failed: {source}")]
    QuicHandshake {
        /// `--relay`.
        relay: String,
        /// Why.
        source: quinn::ConnectionError,
    },
    /// TCP connect or the TLS handshake failed.
    #[error("TLS/TCP connection to {relay} failed: {source}")]
    TcpConnect {
        /// `--relay`.
        relay: String,
        /// Why.
        source: std::io::Error,
    },
    /// The session broke during enrolment.
    #[error("enrolment interrupted: {0}")]
    EnrolInterrupted(String),
    /// The session failed.
    #[error("{what}: {source}")]
    Session {
        /// What the agent was doing.
        what: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The relay answered this session's packets with a stateless reset
    /// it signed with its own key: it restarted and no longer knows the
    /// session. Reconnecting at once finds it.
    #[error("the relay restarted: it answered this session with a stateless reset")]
    RelayRestarted,
    /// The relay ended the session without an error.
    #[error("the session ended")]
    SessionEnded,
    /// The relay refused the session, or failed on its side during an
    /// enrolment. A refusal may be cured on the relay's side (an upgrade,
    /// a restored node record, etcd back), so the agent keeps trying,
    /// loudly.
    #[error("refused by the relay: {0}")]
    Refused(String),
    /// The relay is over its handshake budget and said where to go
    /// instead and when to come back.
    #[error("{message}")]
    Busy {
        /// The relay's words.
        message: String,
        /// Its hint.
        hint: tunnelgate_proto::message::BusyHint,
    },
}

impl AgentError {
    /// What a refusal becomes: [`AgentError::Busy`] when the relay is busy
    /// and said so, [`AgentError::Refused`] (worth another try) when it
    /// failed on its side (its state dir, or etcd away), else `other`.
    pub fn from_refusal(
        refused: tunnelgate_proto::message::Refused,
        other: impl FnOnce(String) -> Self,
    ) -> Self {
        use tunnelgate_proto::message::RefusalCode;
        match (refused.code, refused.busy) {
            (RefusalCode::Busy, Some(hint)) => Self::Busy {
                message: refused.message,
                hint,
            },
            (RefusalCode::Internal, _) => Self::Refused(refused.message),
            _ => other(refused.message),
        }
    }

    /// Whether retrying cannot help (bad token, unusable state dir, ...).
    /// Whether nothing answered at the relay's address: another relay
    /// may do better. A relay that answered and refused (its handshake
    /// budget is spent, say) is alive and worth trying again.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Resolve { .. }
                | Self::NoAddress(_)
                | Self::QuicDial { .. }
                | Self::QuicSilent { .. }
        ) || matches!(self, Self::TcpConnect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::ReadState { .. }
                | Self::WriteState { .. }
                | Self::EnrolledUnsaved { .. }
                | Self::CorruptIdentity { .. }
                | Self::WrongNode { .. }
                | Self::ForeignCertificate
                | Self::NoToken(_)
                | Self::MalformedToken
                | Self::EnrolRefused(_)
                | Self::ErrandRefused(_)
                | Self::Key(_)
                | Self::Tls(_)
                | Self::QuicConfig(_)
        )
    }

    /// A session failure while doing `what`.
    pub fn session(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Session {
            what,
            source: Box::new(source),
        }
    }
}
