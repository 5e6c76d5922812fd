//! Steps an agent and a relay machine against each other with injected time.

use super::*;
use crate::message::{RefusalCode, Welcome};

const INTERVAL: Duration = Duration::from_secs(5);

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("valid test node id")
}

fn assert_ok(r: (Result<(), ControlError>, Result<(), ControlError>)) {
    r.0.expect("agent ok");
    r.1.expect("relay ok");
}

fn hello(id: &str, version: ProtocolVersion) -> Hello {
    Hello {
        version,
        agent_version: "test".into(),
        node_id: node(id),
        hostname: "host".into(),
        docker: DockerFacts::default(),
        labels: Default::default(),
        direct_endpoints: vec![],
        policy: "full".into(),
    }
}

/// Both ends of one control stream, with a shared clock and a wire that
/// delivers instantly unless told to drop.
struct Pair {
    agent: AgentControl,
    relay: RelayControl,
    now: Instant,
    agent_events: Vec<AgentEvent>,
    relay_events: Vec<RelayEvent>,
    drop_relay_to_agent: bool,
}

impl Pair {
    fn new(hello: Hello, certified: &str) -> Self {
        let now = Instant::now();
        Self {
            agent: AgentControl::new(hello, now),
            relay: RelayControl::new(
                node(certified),
                RelayId::new("relay-a").unwrap(),
                INTERVAL,
                now,
            ),
            now,
            agent_events: vec![],
            relay_events: vec![],
            drop_relay_to_agent: false,
        }
    }

    /// Delivers everything queued until both sides are quiet.
    fn drive(&mut self) -> (Result<(), ControlError>, Result<(), ControlError>) {
        let (mut a_res, mut r_res) = (Ok(()), Ok(()));
        loop {
            let mut moved = false;
            while let Some(m) = self.agent.poll_transmit() {
                moved = true;
                if r_res.is_ok() {
                    r_res = self.relay.handle_message(m, self.now);
                }
            }
            while let Some(m) = self.relay.poll_transmit() {
                moved = true;
                if a_res.is_ok() && !self.drop_relay_to_agent {
                    a_res = self.agent.handle_message(m, self.now);
                }
            }
            self.agent_events
                .extend(std::iter::from_fn(|| self.agent.poll_event()));
            self.relay_events
                .extend(std::iter::from_fn(|| self.relay.poll_event()));
            if !moved {
                return (a_res, r_res);
            }
        }
    }

    /// Advances the clock to the earlier of both timeouts and fires it.
    fn advance(&mut self, by: Duration) -> (Result<(), ControlError>, Result<(), ControlError>) {
        self.now += by;
        let a = if self.agent.poll_timeout().is_some_and(|t| t <= self.now) {
            self.agent.handle_timeout(self.now)
        } else {
            Ok(())
        };
        let r = if self.relay.poll_timeout().is_some_and(|t| t <= self.now) {
            self.relay.handle_timeout(self.now)
        } else {
            Ok(())
        };
        let (a2, r2) = self.drive();
        (a.and(a2), r.and(r2))
    }
}

#[test]
fn handshake_then_heartbeats_carry_rtt() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    let (a, r) = p.drive();
    assert!(a.is_ok() && r.is_ok());
    assert!(matches!(&p.relay_events[0], RelayEvent::Registered(h) if h.node_id == node("n1")));
    assert!(matches!(
        &p.agent_events[0],
        AgentEvent::Welcomed(Welcome {
            heartbeat_interval_ms: 5000,
            cert_renew_in_ms: None,
            ..
        })
    ));

    // First heartbeat goes out after one interval and is acked at once.
    assert_eq!(p.agent.poll_timeout(), Some(p.now + INTERVAL));
    p.agent.handle_timeout(p.now + INTERVAL).unwrap();
    let Some(ControlMessage::Heartbeat(hb)) = p.agent.poll_transmit() else {
        panic!("expected a heartbeat");
    };
    assert_eq!(hb.rtt_us, None);
    p.now += INTERVAL;
    p.relay
        .handle_message(ControlMessage::Heartbeat(hb), p.now)
        .unwrap();
    let ack = p.relay.poll_transmit().expect("ack queued");
    p.agent
        .handle_message(ack, p.now + Duration::from_millis(7))
        .unwrap();
    assert_eq!(p.agent.rtt(), Some(Duration::from_millis(7)));

    // The next heartbeat reports the measured RTT to the relay.
    p.advance(INTERVAL).0.unwrap();
    assert!(p
        .relay_events
        .contains(&RelayEvent::Rtt(Duration::from_millis(7))));
}

#[test]
fn long_quiet_sessions_stay_up_while_heartbeats_flow() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    assert_ok(p.drive());
    for _ in 0..100 {
        let (a, r) = p.advance(INTERVAL);
        assert!(a.is_ok() && r.is_ok());
    }
}

#[test]
fn silent_relay_is_detected_by_the_agent_and_silent_agent_by_the_relay() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    assert_ok(p.drive());
    p.drop_relay_to_agent = true;
    let mut agent_err = None;
    for _ in 0..10 {
        if let (Err(e), _) = p.advance(INTERVAL) {
            agent_err = Some(e);
            break;
        }
    }
    assert!(agent_err.expect("agent gives up").is_timeout());

    let now = Instant::now();
    let mut relay = RelayControl::new(node("n1"), RelayId::new("r").unwrap(), INTERVAL, now);
    relay
        .handle_message(
            ControlMessage::Hello(hello("n1", ProtocolVersion::CURRENT)),
            now,
        )
        .unwrap();
    let deadline = relay.poll_timeout().unwrap();
    assert_eq!(deadline, now + INTERVAL * MISSED_HEARTBEATS);
    assert!(relay.handle_timeout(deadline).unwrap_err().is_timeout());
}

#[test]
fn incompatible_major_is_refused_naming_both_versions() {
    let future = ProtocolVersion { major: 9, minor: 2 };
    let mut p = Pair::new(hello("n1", future), "n1");
    let (a, r) = p.drive();
    assert!(matches!(r, Err(ControlError::Incompatible(_))));
    let Err(ControlError::Refused(refused)) = a else {
        panic!("agent should be refused, got {a:?}");
    };
    assert_eq!(refused.code, RefusalCode::IncompatibleVersion);
    assert!(refused.message.contains("9.2") && refused.message.contains("1.0"));
}

#[test]
fn hello_for_another_node_is_refused() {
    let mut p = Pair::new(hello("intruder", ProtocolVersion::CURRENT), "n1");
    let (a, r) = p.drive();
    assert!(matches!(r, Err(ControlError::IdentityMismatch { .. })));
    assert!(matches!(
        a,
        Err(ControlError::Refused(Refused {
            code: RefusalCode::IdentityMismatch,
            ..
        }))
    ));
}

#[test]
fn drain_reaches_the_agent_and_unknown_messages_are_ignored() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    assert_ok(p.drive());
    p.agent
        .handle_message(ControlMessage::Unknown, p.now)
        .unwrap();
    p.relay
        .handle_message(ControlMessage::Unknown, p.now)
        .unwrap();
    p.relay.drain(
        "shutting down",
        Duration::from_secs(3),
        Duration::from_secs(20),
        vec![],
    );
    assert_ok(p.drive());
    assert!(matches!(p.agent_events.last(),
        Some(AgentEvent::Drain(d)) if d.grace_ms == 3000 && d.spread_ms == 20_000));
}

#[test]
fn membership_goes_in_the_welcome_and_changes_follow() {
    let member = |id: &str| RelayMember {
        relay_id: RelayId::new(id).unwrap(),
        agent_addr: format!("{id}:7443"),
        draining: false,
    };
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    p.relay = RelayControl::new(
        node("n1"),
        RelayId::new("relay-a").unwrap(),
        INTERVAL,
        p.now,
    )
    .with_members(vec![member("relay-a"), member("relay-b")]);
    assert_ok(p.drive());
    assert!(matches!(&p.agent_events[0],
        AgentEvent::Welcomed(w) if w.members.len() == 2 && w.members[1].relay_id.as_str() == "relay-b"));
    p.relay
        .members_changed(vec![member("relay-c")], Duration::from_secs(6));
    assert_ok(p.drive());
    assert!(matches!(p.agent_events.last(),
        Some(AgentEvent::Members(m, spread)) if m.len() == 1 && m[0].agent_addr == "relay-c:7443"
            && *spread == Duration::from_secs(6)));
}

#[test]
fn certificates_are_renewed_when_the_relay_says_and_retried_if_unanswered() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    let renew_in = Duration::from_secs(7);
    p.relay = RelayControl::new(
        node("n1"),
        RelayId::new("relay-a").unwrap(),
        INTERVAL,
        p.now,
    )
    .with_cert_renewal(renew_in);
    assert_ok(p.drive());
    assert!(!p.agent_events.contains(&AgentEvent::RenewDue));

    // Due after 7 s: one heartbeat interval (5 s) is not enough.
    assert_ok(p.advance(INTERVAL));
    assert!(!p.agent_events.contains(&AgentEvent::RenewDue));
    assert_ok(p.advance(Duration::from_secs(2)));
    assert_eq!(
        p.agent_events
            .iter()
            .filter(|e| **e == AgentEvent::RenewDue)
            .count(),
        1
    );

    p.agent.renew_cert("CSR".into());
    assert_ok(p.drive());
    assert_eq!(
        p.relay_events.last(),
        Some(&RelayEvent::RenewRequested("CSR".into()))
    );
    p.relay.cert_renewed("CERT".into(), renew_in);
    assert_ok(p.drive());
    assert_eq!(
        p.agent_events.last(),
        Some(&AgentEvent::CertRenewed("CERT".into()))
    );

    // Next renewal is due 7 s after the new certificate; if the relay never
    // answers, the agent asks again after RENEW_RETRY.
    p.agent_events.clear();
    assert_ok(p.advance(renew_in));
    assert!(p.agent_events.contains(&AgentEvent::RenewDue));
    p.agent_events.clear();
    let mut waited = Duration::ZERO;
    while waited < RENEW_RETRY {
        assert_ok(p.advance(INTERVAL));
        waited += INTERVAL;
    }
    assert!(p.agent_events.contains(&AgentEvent::RenewDue));
}

#[test]
fn node_updates_reach_the_relay() {
    let mut p = Pair::new(hello("n1", ProtocolVersion::CURRENT), "n1");
    assert_ok(p.drive());
    p.agent.update_node(DockerFacts {
        reachable: false,
        error: Some("connection refused".into()),
        ..Default::default()
    });
    assert_ok(p.drive());
    assert!(matches!(p.relay_events.last(), Some(RelayEvent::NodeUpdated(f)) if !f.reachable));
}

#[test]
fn hello_timeout_and_out_of_order_messages() {
    let now = Instant::now();
    let mut relay = RelayControl::new(node("n1"), RelayId::new("r").unwrap(), INTERVAL, now);
    let err = relay
        .handle_message(
            ControlMessage::Heartbeat(Heartbeat {
                seq: 1,
                rtt_us: None,
            }),
            now,
        )
        .unwrap_err();
    assert_eq!(err, ControlError::Unexpected("heartbeat"));
    assert!(matches!(
        relay.poll_transmit(),
        Some(ControlMessage::Refused(_))
    ));

    let mut relay = RelayControl::new(node("n1"), RelayId::new("r").unwrap(), INTERVAL, now);
    assert!(relay
        .handle_timeout(now + HANDSHAKE_TIMEOUT)
        .unwrap_err()
        .is_timeout());
}

#[test]
fn a_daemon_certificate_errand_needs_no_hello_and_ends_at_its_deadline() {
    let now = Instant::now();
    let mut relay = RelayControl::new(node("n1"), RelayId::new("r").unwrap(), INTERVAL, now);
    let ask = SignDaemonCert {
        csr_pem: "csr".into(),
        dns_names: vec!["node.example".into()],
        ip_addresses: vec![],
    };
    relay
        .handle_message(ControlMessage::SignDaemonCert(ask.clone()), now)
        .unwrap();
    assert_eq!(
        relay.poll_event(),
        Some(RelayEvent::DaemonCertRequested(ask))
    );
    relay.daemon_cert_signed(DaemonCertSigned {
        cert_pem: "cert".into(),
        client_ca_pem: "ca".into(),
        renew_in_ms: Some(1),
    });
    assert!(matches!(
        relay.poll_transmit(),
        Some(ControlMessage::DaemonCertSigned(_))
    ));
    // An errand is no session: a heartbeat on it is out of order, and
    // it never outlives the handshake deadline.
    assert!(relay
        .handle_message(
            ControlMessage::Heartbeat(Heartbeat {
                seq: 1,
                rtt_us: None
            }),
            now
        )
        .is_err());
    let mut relay = RelayControl::new(node("n1"), RelayId::new("r").unwrap(), INTERVAL, now);
    relay
        .handle_message(
            ControlMessage::SignDaemonCert(SignDaemonCert {
                csr_pem: String::new(),
                dns_names: vec![],
                ip_addresses: vec![],
            }),
            now,
        )
        .unwrap();
    assert!(relay
        .handle_timeout(now + HANDSHAKE_TIMEOUT)
        .unwrap_err()
        .is_timeout());
}
