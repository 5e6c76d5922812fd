//! Control-stream state machines: handshake, heartbeat and drain.
//!
//! [`AgentControl`] and [`RelayControl`] are the two ends of one agent
//! session's control stream. Neither does IO. A driver calls them in this
//! order, over and over:
//!
//! 1. [`Machine::poll_transmit`] until `None`, writing each message out;
//! 2. [`Machine::poll_event`] until `None`, acting on each event;
//! 3. waits for a message from the peer or for [`Machine::poll_timeout`];
//! 4. feeds what happened to [`Machine::handle_message`] or
//!    [`Machine::handle_timeout`].
//!
//! An `Err` from a `handle_*` call ends the session: the driver writes what
//! is still queued (a [`Refused`] explains the end to the peer) and closes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::message::{
    CertRenewed, ControlMessage, DaemonCertSigned, DockerFacts, Drain, Heartbeat, HeartbeatAck,
    Hello, Leave, Left, Members, NodeUpdate, RefusalCode, Refused, RelayMember, RenewCert,
    SignDaemonCert, Welcome,
};
use crate::version::IncompatibleVersion;
use crate::{NodeId, ProtocolVersion, RelayId};

/// How long either side waits for the handshake's first message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Heartbeats that may go missing before a side declares its peer gone.
pub const MISSED_HEARTBEATS: u32 = 3;

/// How long the agent waits for a renewed certificate before asking again.
pub const RENEW_RETRY: Duration = Duration::from_secs(60);

/// Why a control stream ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The peer refused the session.
    #[error("refused by peer ({code:?}): {message}", code = .0.code, message = .0.message)]
    Refused(Refused),
    /// Protocol majors differ.
    #[error(transparent)]
    Incompatible(#[from] IncompatibleVersion),
    /// Nothing arrived from the peer for too long.
    #[error("peer silent for {0:?}")]
    PeerSilent(Duration),
    /// The peer sent a message that is not valid at this point.
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    /// The agent's hello names a node other than its certificate's.
    #[error("hello names node {claimed} but the certificate is for {certified}")]
    IdentityMismatch {
        /// Node id from the hello.
        claimed: NodeId,
        /// Node id from the certificate.
        certified: NodeId,
    },
}

impl ControlError {
    /// Whether the peer went quiet (as opposed to misbehaving).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::PeerSilent(_))
    }
}

/// The interface a driver uses; see the module docs for the call order.
pub trait Machine {
    /// What the machine reports to its owner.
    type Event;
    /// Feeds one message from the peer.
    fn handle_message(&mut self, msg: ControlMessage, now: Instant) -> Result<(), ControlError>;
    /// Tells the machine that `now` has reached its last [`Self::poll_timeout`].
    fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlError>;
    /// The next message to write to the peer.
    fn poll_transmit(&mut self) -> Option<ControlMessage>;
    /// The next event for the owner.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// When to call [`Self::handle_timeout`] next.
    fn poll_timeout(&self) -> Option<Instant>;
}

fn kind(msg: &ControlMessage) -> &'static str {
    match msg {
        ControlMessage::Hello(_) => "hello",
        ControlMessage::Welcome(_) => "welcome",
        ControlMessage::Refused(_) => "refused",
        ControlMessage::Enroll(_) => "enroll",
        ControlMessage::Enrolled(_) => "enrolled",
        ControlMessage::Heartbeat(_) => "heartbeat",
        ControlMessage::HeartbeatAck(_) => "heartbeat_ack",
        ControlMessage::NodeUpdate(_) => "node_update",
        ControlMessage::Drain(_) => "drain",
        ControlMessage::Members(_) => "members",
        ControlMessage::RenewCert(_) => "renew_cert",
        ControlMessage::CertRenewed(_) => "cert_renewed",
        ControlMessage::SignDaemonCert(_) => "sign_daemon_cert",
        ControlMessage::DaemonCertSigned(_) => "daemon_cert_signed",
        ControlMessage::Leave(_) => "leave",
        ControlMessage::Left(_) => "left",
        ControlMessage::Unknown => "unknown",
    }
}

/// What the agent's control machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The relay accepted the session.
    Welcomed(Welcome),
    /// A heartbeat came back after this round trip.
    Rtt(Duration),
    /// The relay asks the agent to move.
    Drain(Drain),
    /// The cluster's membership changed; moves it causes spread over
    /// this window (zero: the agent's default).
    Members(Vec<RelayMember>, Duration),
    /// Time to renew the node certificate: the owner makes a new key and
    /// passes its request to [`AgentControl::renew_cert`].
    RenewDue,
    /// The relay signed a fresh node certificate.
    CertRenewed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    AwaitWelcome { deadline: Instant },
    Established,
}

/// The agent's end of the control stream.
#[derive(Debug)]
pub struct AgentControl {
    state: AgentState,
    interval: Duration,
    seq: u64,
    in_flight: Option<(u64, Instant)>,
    last_rtt: Option<Duration>,
    last_heard: Instant,
    next_heartbeat: Instant,
    renew_at: Option<Instant>,
    transmit: VecDeque<ControlMessage>,
    events: VecDeque<AgentEvent>,
}

impl AgentControl {
    /// Starts a session by queueing `hello`.
    pub fn new(hello: Hello, now: Instant) -> Self {
        Self {
            state: AgentState::AwaitWelcome {
                deadline: now + HANDSHAKE_TIMEOUT,
            },
            interval: Duration::from_secs(5),
            seq: 0,
            in_flight: None,
            last_rtt: None,
            last_heard: now,
            next_heartbeat: now,
            renew_at: None,
            transmit: VecDeque::from([ControlMessage::Hello(hello)]),
            events: VecDeque::new(),
        }
    }

    /// Reports new daemon facts to the relay.
    pub fn update_node(&mut self, docker: DockerFacts) {
        self.transmit
            .push_back(ControlMessage::NodeUpdate(NodeUpdate { docker }));
    }

    /// Asks the relay to sign `csr_pem`, after a [`AgentEvent::RenewDue`].
    pub fn renew_cert(&mut self, csr_pem: String) {
        self.transmit
            .push_back(ControlMessage::RenewCert(RenewCert { csr_pem }));
    }

    /// The last measured heartbeat round trip.
    pub fn rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    fn dead_after(&self) -> Duration {
        self.interval * MISSED_HEARTBEATS
    }
}

impl Machine for AgentControl {
    type Event = AgentEvent;

    fn handle_message(&mut self, msg: ControlMessage, now: Instant) -> Result<(), ControlError> {
        match (self.state, msg) {
            (_, ControlMessage::Refused(r)) => Err(ControlError::Refused(r)),
            (_, ControlMessage::Unknown) => Ok(()),
            (AgentState::AwaitWelcome { .. }, ControlMessage::Welcome(w)) => {
                ProtocolVersion::CURRENT.check_compatible(w.version)?;
                self.interval = Duration::from_millis(w.heartbeat_interval_ms.max(50));
                self.state = AgentState::Established;
                self.last_heard = now;
                self.next_heartbeat = now + self.interval;
                self.renew_at = w.cert_renew_in_ms.map(|ms| now + Duration::from_millis(ms));
                self.events.push_back(AgentEvent::Welcomed(w));
                Ok(())
            }
            (AgentState::Established, ControlMessage::CertRenewed(r)) => {
                self.last_heard = now;
                self.renew_at = r.renew_in_ms.map(|ms| now + Duration::from_millis(ms));
                self.events.push_back(AgentEvent::CertRenewed(r.cert_pem));
                Ok(())
            }
            (AgentState::Established, ControlMessage::HeartbeatAck(ack)) => {
                self.last_heard = now;
                if let Some((seq, sent)) = self.in_flight {
                    if seq == ack.seq {
                        let rtt = now.saturating_duration_since(sent);
                        self.last_rtt = Some(rtt);
                        self.in_flight = None;
                        self.events.push_back(AgentEvent::Rtt(rtt));
                    }
                }
                Ok(())
            }
            (AgentState::Established, ControlMessage::Members(m)) => {
                self.last_heard = now;
                self.events.push_back(AgentEvent::Members(
                    m.members,
                    Duration::from_millis(m.spread_ms),
                ));
                Ok(())
            }
            (AgentState::Established, ControlMessage::Drain(d)) => {
                self.events.push_back(AgentEvent::Drain(d));
                Ok(())
            }
            (_, other) => Err(ControlError::Unexpected(kind(&other))),
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlError> {
        match self.state {
            AgentState::AwaitWelcome { deadline } if now >= deadline => {
                Err(ControlError::PeerSilent(HANDSHAKE_TIMEOUT))
            }
            AgentState::AwaitWelcome { .. } => Ok(()),
            AgentState::Established => {
                let silent = now.saturating_duration_since(self.last_heard);
                if silent >= self.dead_after() {
                    return Err(ControlError::PeerSilent(silent));
                }
                if self.renew_at.is_some_and(|at| now >= at) {
                    // Asked again later if no certificate comes back.
                    self.renew_at = Some(now + RENEW_RETRY);
                    self.events.push_back(AgentEvent::RenewDue);
                }
                if now >= self.next_heartbeat {
                    self.seq += 1;
                    self.in_flight = Some((self.seq, now));
                    self.transmit
                        .push_back(ControlMessage::Heartbeat(Heartbeat {
                            seq: self.seq,
                            rtt_us: self.last_rtt.map(|d| d.as_micros() as u64),
                        }));
                    self.next_heartbeat = now + self.interval;
                }
                Ok(())
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<ControlMessage> {
        self.transmit.pop_front()
    }

    fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(match self.state {
            AgentState::AwaitWelcome { deadline } => deadline,
            AgentState::Established => {
                let next = self.next_heartbeat.min(self.last_heard + self.dead_after());
                self.renew_at.map_or(next, |at| next.min(at))
            }
        })
    }
}

/// What the relay's control machine reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The agent said hello and was welcomed.
    Registered(Box<Hello>),
    /// The agent reported its last heartbeat round trip.
    Rtt(Duration),
    /// The agent's daemon facts changed.
    NodeUpdated(DockerFacts),
    /// The agent asks for a fresh certificate for this PEM request; answer
    /// with [`RelayControl::cert_renewed`].
    RenewRequested(String),
    /// The agent asks for its daemon's server certificate; answer with
    /// [`RelayControl::daemon_cert_signed`] or [`RelayControl::fail`].
    DaemonCertRequested(SignDaemonCert),
    /// The node asks to be revoked (it is being removed from its host);
    /// answer with [`RelayControl::left`] or [`RelayControl::fail`].
    LeaveRequested(Leave),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelayState {
    AwaitHello {
        deadline: Instant,
    },
    Established,
    /// A connection made only to ask for a daemon certificate: no
    /// session, no heartbeats; it ends when the agent closes it or at
    /// the deadline.
    Errand {
        deadline: Instant,
    },
}

/// The relay's end of the control stream of an agent whose certificate
/// names `node_id`.
#[derive(Debug)]
pub struct RelayControl {
    state: RelayState,
    node_id: NodeId,
    relay_id: RelayId,
    interval: Duration,
    cert_renew_in: Option<Duration>,
    members: Vec<RelayMember>,
    last_heard: Instant,
    transmit: VecDeque<ControlMessage>,
    events: VecDeque<RelayEvent>,
}

impl RelayControl {
    /// Waits for the hello of the agent certified as `node_id`.
    pub fn new(node_id: NodeId, relay_id: RelayId, interval: Duration, now: Instant) -> Self {
        Self {
            state: RelayState::AwaitHello {
                deadline: now + HANDSHAKE_TIMEOUT,
            },
            node_id,
            relay_id,
            interval,
            cert_renew_in: None,
            members: Vec::new(),
            last_heard: now,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Tells the agent, in the welcome, which relays the cluster has.
    pub fn with_members(mut self, members: Vec<RelayMember>) -> Self {
        self.members = members;
        self
    }

    /// Tells an established agent that the membership changed, and over
    /// what window agents should spread the moves it causes (before the
    /// welcome, the welcome carries it).
    pub fn members_changed(&mut self, members: Vec<RelayMember>, spread: Duration) {
        match self.state {
            RelayState::Established => self.transmit.push_back(ControlMessage::Members(Members {
                members,
                spread_ms: spread.as_millis() as u64,
            })),
            RelayState::AwaitHello { .. } | RelayState::Errand { .. } => self.members = members,
        }
    }

    /// Tells the agent, in the welcome, to renew its certificate after `after`.
    pub fn with_cert_renewal(mut self, after: Duration) -> Self {
        self.cert_renew_in = Some(after);
        self
    }

    /// Sends a certificate signed after [`RelayEvent::RenewRequested`]; the
    /// agent renews again after `renew_in`.
    pub fn cert_renewed(&mut self, cert_pem: String, renew_in: Duration) {
        self.transmit
            .push_back(ControlMessage::CertRenewed(CertRenewed {
                cert_pem,
                renew_in_ms: Some(renew_in.as_millis() as u64),
            }));
    }

    /// Sends a daemon certificate signed after
    /// [`RelayEvent::DaemonCertRequested`].
    pub fn daemon_cert_signed(&mut self, signed: DaemonCertSigned) {
        self.transmit
            .push_back(ControlMessage::DaemonCertSigned(signed));
    }

    /// Tells the agent its node is revoked, after [`RelayEvent::LeaveRequested`].
    pub fn left(&mut self) {
        let node_id = self.node_id.clone();
        self.transmit
            .push_back(ControlMessage::Left(Left { node_id }));
    }

    /// Answers a request the relay could not serve, with a sentence for
    /// the agent's operator; the session itself goes on.
    pub fn fail(&mut self, code: RefusalCode, message: String) {
        self.transmit
            .push_back(ControlMessage::Refused(Refused::new(code, message)));
    }

    /// Asks the agent to move elsewhere within `grace`, reconnecting at a
    /// random moment within `spread`.
    /// `members` is the membership with this relay marked draining.
    pub fn drain(
        &mut self,
        reason: impl Into<String>,
        grace: Duration,
        spread: Duration,
        members: Vec<RelayMember>,
    ) {
        self.transmit.push_back(ControlMessage::Drain(Drain {
            reason: reason.into(),
            grace_ms: grace.as_millis() as u64,
            spread_ms: spread.as_millis() as u64,
            members,
        }));
    }

    fn refuse(&mut self, code: RefusalCode, err: ControlError) -> Result<(), ControlError> {
        self.transmit
            .push_back(ControlMessage::Refused(Refused::new(code, err.to_string())));
        Err(err)
    }
}

impl Machine for RelayControl {
    type Event = RelayEvent;

    fn handle_message(&mut self, msg: ControlMessage, now: Instant) -> Result<(), ControlError> {
        match (self.state, msg) {
            (_, ControlMessage::Unknown) => Ok(()),
            (RelayState::AwaitHello { .. }, ControlMessage::Hello(hello)) => {
                if let Err(e) = ProtocolVersion::CURRENT.check_compatible(hello.version) {
                    return self.refuse(RefusalCode::IncompatibleVersion, e.into());
                }
                if hello.node_id != self.node_id {
                    let err = ControlError::IdentityMismatch {
                        claimed: hello.node_id,
                        certified: self.node_id.clone(),
                    };
                    return self.refuse(RefusalCode::IdentityMismatch, err);
                }
                self.state = RelayState::Established;
                self.last_heard = now;
                self.transmit.push_back(ControlMessage::Welcome(Welcome {
                    version: ProtocolVersion::CURRENT,
                    relay_id: self.relay_id.clone(),
                    heartbeat_interval_ms: self.interval.as_millis() as u64,
                    cert_renew_in_ms: self.cert_renew_in.map(|d| d.as_millis() as u64),
                    members: std::mem::take(&mut self.members),
                }));
                self.events
                    .push_back(RelayEvent::Registered(Box::new(hello)));
                Ok(())
            }
            (RelayState::Established, ControlMessage::Heartbeat(hb)) => {
                self.last_heard = now;
                self.transmit
                    .push_back(ControlMessage::HeartbeatAck(HeartbeatAck { seq: hb.seq }));
                if let Some(us) = hb.rtt_us {
                    self.events
                        .push_back(RelayEvent::Rtt(Duration::from_micros(us)));
                }
                Ok(())
            }
            (RelayState::Established, ControlMessage::NodeUpdate(u)) => {
                self.last_heard = now;
                self.events.push_back(RelayEvent::NodeUpdated(u.docker));
                Ok(())
            }
            (RelayState::Established, ControlMessage::RenewCert(r)) => {
                self.last_heard = now;
                self.events.push_back(RelayEvent::RenewRequested(r.csr_pem));
                Ok(())
            }
            (RelayState::AwaitHello { deadline }, ControlMessage::SignDaemonCert(r)) => {
                self.state = RelayState::Errand { deadline };
                self.events.push_back(RelayEvent::DaemonCertRequested(r));
                Ok(())
            }
            (RelayState::AwaitHello { deadline }, ControlMessage::Leave(r)) => {
                self.state = RelayState::Errand { deadline };
                self.events.push_back(RelayEvent::LeaveRequested(r));
                Ok(())
            }
            (_, other) => {
                let err = ControlError::Unexpected(kind(&other));
                self.refuse(RefusalCode::ProtocolViolation, err)
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlError> {
        match self.state {
            RelayState::AwaitHello { deadline } | RelayState::Errand { deadline }
                if now >= deadline =>
            {
                Err(ControlError::PeerSilent(HANDSHAKE_TIMEOUT))
            }
            RelayState::AwaitHello { .. } | RelayState::Errand { .. } => Ok(()),
            RelayState::Established => {
                let silent = now.saturating_duration_since(self.last_heard);
                if silent >= self.interval * MISSED_HEARTBEATS {
                    Err(ControlError::PeerSilent(silent))
                } else {
                    Ok(())
                }
            }
        }
    }

    fn poll_transmit(&mut self) -> Option<ControlMessage> {
        self.transmit.pop_front()
    }

    fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(match self.state {
            RelayState::AwaitHello { deadline } | RelayState::Errand { deadline } => deadline,
            RelayState::Established => self.last_heard + self.interval * MISSED_HEARTBEATS,
        })
    }
}

#[cfg(test)]
mod tests;
