//! The agent listener: accepts agent sessions over QUIC (UDP) and TLS/TCP
//! with yamux on the same port number, enrols new agents, runs each
//! session's control stream and keeps the session table current. Past the
//! handshake nothing here knows which transport carries a session.
//!
//! ```text
//! QUIC handshake ── no client cert ──► control stream: Enroll ─► Enrolled | Refused, close
//!        └──────── node cert ───────► record check (enrolled, not revoked, current serial)
//!                                      control stream: Hello ──► Welcome ─► in session table
//!                                      heartbeats, certificate renewals … until lost,
//!                                      replaced, drained or revoked
//! ```
//!
//! New handshakes beyond `max_agent_handshakes_per_sec` wait their turn
//! for up to [`HANDSHAKE_QUEUE`], and past that are refused before any
//! cryptography, so a reconnect storm after a restart cannot starve the
//! sessions and calls already running; the refused agents retry with
//! backoff and jitter.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};
use tunnelgate_proto::control::{RelayControl, RelayEvent};
use tunnelgate_proto::frame::{FrameError, DEFAULT_MAX_FRAME};
use tunnelgate_proto::message::{ControlMessage, Enrolled, MessageError, RefusalCode, Refused};
use tunnelgate_session::{driver, tls, Session, Stream};

use crate::identity::{renewal_delay, NodeKey};
use crate::sessions::{ControlCommand, Entry, NodeInfo};
use crate::Shared;

/// How long an agent has for its QUIC handshake and first control message.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A token bucket of agent handshakes: `rate` per second, bursts of as
/// many, and a short queue behind it.
#[derive(Debug)]
pub struct HandshakeBudget {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

/// How long a handshake may wait for the budget before it is refused.
/// Waiting a moment lets an agent in on its first try instead of sending
/// it into exponential backoff, which in a 10,000-agent restart storm left
/// a tail of agents still away 20 s after the rest were back. The agent's
/// own handshake timeout (10 s) leaves room for it.
pub const HANDSHAKE_QUEUE: Duration = Duration::from_secs(3);

impl HandshakeBudget {
    /// A full bucket of `per_sec`.
    pub fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Books one handshake: how long to wait before starting it (zero when
    /// the budget has one now), or `None` when even waiting `max_wait`
    /// would not reach one — then refuse it.
    pub fn reserve(&self, max_wait: Duration) -> Option<Duration> {
        self.reserve_at(max_wait, Instant::now())
    }

    fn reserve_at(&self, max_wait: Duration, now: Instant) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = now.max(*last);
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        // Tokens below zero are handshakes booked ahead of the refill.
        let left = *tokens - 1.0;
        let wait = Duration::from_secs_f64((-left).max(0.0) / self.rate);
        if wait > max_wait {
            return None;
        }
        *tokens = left;
        Some(wait)
    }
}

/// Waits out a booked handshake's turn; false if the relay stops first.
async fn wait_turn(wait: Duration, cancel: &CancellationToken) -> bool {
    if wait.is_zero() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = cancel.cancelled() => false,
    }
}

/// Accepts QUIC agent sessions until `stop_accepting` fires (a draining
/// relay takes no new agents); each session runs until `cancel`.
pub async fn run_quic(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => return,
            },
            () = stop_accepting.cancelled() => {
                // Refuse handshakes outright instead of leaving them queued.
                endpoint.set_server_config(None);
                return;
            }
        };
        let Some(wait) = shared.handshakes.reserve(HANDSHAKE_QUEUE) else {
            shared.metrics.limit_hit("agent_handshakes");
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        let cancel = cancel.clone();
        let span = info_span!("conn", peer = %incoming.remote_address(), transport = "quic");
        tracker.spawn(
            async move {
                if !wait_turn(wait, &cancel).await {
                    return;
                }
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        shared.metrics.handshake("tls_failed");
                        info!(error = %e, "agent QUIC handshake refused");
                        return;
                    }
                    Err(_) => {
                        shared.metrics.handshake("timeout");
                        debug!("agent handshake timed out");
                        return;
                    }
                };
                serve_session(Session::from_quic(conn), shared, cancel).await;
            }
            .instrument(span),
        );
    }
}

/// Accepts TLS/TCP agent sessions until `stop_accepting` fires; each
/// session runs until `cancel`.
pub async fn run_tcp(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    stop_accepting: CancellationToken,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Some((tcp, peer)) = crate::accept_tcp(&listener, &stop_accepting).await else {
            return;
        };
        let Some(wait) = shared.handshakes.reserve(HANDSHAKE_QUEUE) else {
            shared.metrics.limit_hit("agent_handshakes");
            drop(tcp);
            continue;
        };
        let (shared, cancel, acceptor) = (shared.clone(), cancel.clone(), acceptor.clone());
        let span = info_span!("conn", %peer, transport = "tcp");
        tracker.spawn(
            async move {
                if !wait_turn(wait, &cancel).await {
                    return;
                }
                match tunnelgate_session::tcp::accept(tcp, &acceptor).await {
                    Ok(mux) => serve_session(Session::from_mux(mux), shared, cancel).await,
                    Err(e) => {
                        shared.metrics.handshake("tls_failed");
                        info!(error = %e, "agent TLS handshake refused");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Serves one authenticated transport connection, whatever the transport.
pub async fn serve_session(session: Session, shared: Arc<Shared>, cancel: CancellationToken) {
    let certified = session
        .peer_certificates()
        .and_then(|chain| chain.first().and_then(tls::subject));
    let control = match tokio::time::timeout(HANDSHAKE_TIMEOUT, session.accept_stream()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Garbage on the transport (e.g. malformed yamux frames) ends up here.
            info!(error = %e, "agent session failed before its control stream opened");
            return;
        }
        Err(_) => {
            shared.metrics.handshake("timeout");
            session.close("no control stream within the handshake timeout");
            return;
        }
    };
    let Some(subject) = certified else {
        return enrol(session, control, &shared).await;
    };
    match shared.authority.check_node_cert(&subject) {
        Ok(key) => {
            let span = info_span!("session", tenant = %key.tenant, node_id = %key.node_id);
            run_control(session, control, key, subject, shared, cancel)
                .instrument(span)
                .await
        }
        Err(refused) => {
            shared.metrics.handshake("refused");
            info!(node = %subject.name, reason = %refused.message, "agent certificate refused");
            refuse_and_close(session, control, refused).await;
        }
    }
}

/// Sends `refused` on the control stream, lets the agent read it, closes.
async fn refuse_and_close(session: Session, mut control: Stream, refused: Refused) {
    let reason = refused.message.clone();
    let _ = control
        .write_message(&ControlMessage::Refused(refused), DEFAULT_MAX_FRAME)
        .await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut control).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.closed()).await;
    session.close(&reason);
}

/// First contact: trade a join token and a CSR for a node certificate.
async fn enrol(session: Session, mut control: Stream, shared: &Shared) {
    let refuse = |code, message: String| Refused { code, message };
    let outcome = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        control.read_message::<ControlMessage>(DEFAULT_MAX_FRAME),
    )
    .await
    {
        Err(_) => Err(refuse(
            RefusalCode::ProtocolViolation,
            "no enrolment request within the handshake timeout".into(),
        )),
        Ok(Err(e)) => Err(refuse(
            RefusalCode::ProtocolViolation,
            format!("unreadable enrolment request: {e}"),
        )),
        Ok(Ok(ControlMessage::Enroll(req))) => match shared.authority.use_join_token(&req.token) {
            Err(e) => {
                warn!(error = %e, "cannot read the token store");
                Err(refuse(
                    RefusalCode::Internal,
                    "the relay cannot read its token store; see the relay's log".into(),
                ))
            }
            Ok(Err(e)) => Err(refuse(RefusalCode::BadToken, e.to_string())),
            Ok(Ok(token)) => match shared.authority.issue_node_cert(
                &token.tenant,
                &req.node_id,
                &req.csr_pem,
                shared.config.node_cert_ttl,
                false,
            ) {
                Ok(cert_pem) => {
                    info!(tenant = %token.tenant, node_id = %req.node_id, token_id = %token.id, "node enrolled");
                    Ok(Enrolled {
                        cert_pem,
                        ca_pem: shared.authority.ca_pem().to_owned(),
                    })
                }
                Err(e) => Err(refuse(
                    RefusalCode::ProtocolViolation,
                    format!("cannot issue a certificate: {e}"),
                )),
            },
        },
        Ok(Ok(_)) => Err(refuse(
            RefusalCode::IdentityMismatch,
            "this connection has no node certificate; enrol with a join token first".into(),
        )),
    };
    let reply = match outcome {
        Ok(enrolled) => {
            shared.metrics.handshake("enrolled");
            ControlMessage::Enrolled(enrolled)
        }
        Err(refused) => {
            shared.metrics.handshake("refused");
            info!(reason = %refused.message, "enrolment refused");
            ControlMessage::Refused(refused)
        }
    };
    let _ = control.write_message(&reply, DEFAULT_MAX_FRAME).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut control).await;
    // Let the agent read the answer and close; it then reconnects with mTLS.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, session.closed()).await;
    session.close("enrolment finished");
}

/// Runs an authenticated agent's control stream for the session's life.
async fn run_control(
    session: Session,
    mut control: Stream,
    key: NodeKey,
    cert: tls::Subject,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let ttl = shared.config.node_cert_ttl;
    let mut machine = RelayControl::new(
        key.node_id.clone(),
        shared.authority.relay_id().to_owned(),
        shared.config.heartbeat_interval,
        Instant::now(),
    )
    .with_cert_renewal(crate::identity::renew_in(&cert));
    let (tx, rx) = mpsc::channel::<ControlCommand>(8);
    let transport = session.transport().as_str();
    let mut entry: Option<Arc<Entry>> = None;
    let result = driver::drive(
        &mut machine,
        &mut control,
        rx,
        |event| match event {
            RelayEvent::Registered(hello) => {
                info!(hostname = %hello.hostname, agent_version = %hello.agent_version,
                      daemon_reachable = hello.docker.reachable, %transport, "agent connected");
                let info = NodeInfo {
                    docker: hello.docker.clone(),
                    hello: *hello,
                    connected_since: SystemTime::now(),
                    rtt: None,
                };
                entry = Some(shared.sessions.insert(
                    session.clone(),
                    key.clone(),
                    cert.serial.clone(),
                    info,
                    tx.clone(),
                ));
                shared
                    .metrics
                    .agents_connected
                    .with_label_values(&[transport])
                    .inc();
                shared.metrics.handshake("accepted");
            }
            RelayEvent::Rtt(rtt) => {
                if let Some(e) = &entry {
                    e.update(|i| i.rtt = Some(rtt));
                }
            }
            RelayEvent::NodeUpdated(docker) => {
                info!(
                    daemon_reachable = docker.reachable,
                    error = docker.error.as_deref().unwrap_or(""),
                    "node update"
                );
                if let Some(e) = &entry {
                    e.update(|i| i.docker = docker);
                }
            }
            RelayEvent::RenewRequested(csr) => {
                match shared
                    .authority
                    .issue_node_cert(&key.tenant, &key.node_id, &csr, ttl, true)
                {
                    Ok(pem) => {
                        info!("node certificate renewed");
                        let cmd: ControlCommand =
                            Box::new(move |m| m.cert_renewed(pem, renewal_delay(ttl)));
                        let _ = tx.try_send(cmd);
                    }
                    // The agent asks again; a revoked node is dropped by the watcher.
                    Err(e) => warn!(error = %e, "cannot renew the node certificate"),
                }
            }
        },
        cancel,
    )
    .await;
    if let Some(e) = &entry {
        shared.sessions.remove(e);
        shared
            .metrics
            .agents_connected
            .with_label_values(&[transport])
            .dec();
    }
    match result {
        Ok(()) => {
            info!("session closed by relay shutdown");
            session.close("relay shutting down");
        }
        Err(e) => {
            // Agents come and go; this is routine, the agent logs its side.
            info!(error = %e, "agent session ended");
            if let driver::DriveError::Message(MessageError::Frame(FrameError::TooLarge {
                ..
            })) = e
            {
                shared.metrics.limit_hit("frame_size");
            }
            if matches!(
                e,
                driver::DriveError::Message(_) | driver::DriveError::Truncated(_)
            ) {
                // Closing a QUIC connection drops unacknowledged stream data:
                // give the refusal just written a moment to arrive.
                let _ = tokio::time::timeout(Duration::from_secs(1), session.closed()).await;
            }
            session.close(&e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_queues_a_short_wait_and_refuses_a_long_one() {
        let budget = HandshakeBudget::new(10);
        // One instant throughout, so no refill happens between the calls.
        let now = Instant::now();
        let reserve = |max_wait| budget.reserve_at(max_wait, now);
        for _ in 0..10 {
            assert_eq!(reserve(Duration::ZERO), Some(Duration::ZERO));
        }
        assert_eq!(reserve(Duration::ZERO), None, "the burst is spent");
        let ms = |n| Some(Duration::from_millis(n));
        // The next ones wait for the refill: 0.1 s, 0.2 s, ... up to 1 s.
        let booked: Vec<_> = (0..12).map(|_| reserve(Duration::from_secs(1))).collect();
        let waits: Vec<_> = (1..=10).map(|i| ms(i * 100)).collect();
        assert_eq!(booked[..10].len(), waits.len());
        for (got, want) in booked.iter().zip(&waits) {
            let (got, want) = (got.unwrap(), want.unwrap());
            assert!(
                got.abs_diff(want) < Duration::from_millis(1),
                "{got:?} vs {want:?}"
            );
        }
        // Beyond a second's wait: refused, and not booked.
        assert_eq!(booked[10..], [None, None]);
        // Later, the refill has paid the bookings back.
        let later = now + Duration::from_secs(3);
        assert_eq!(
            budget.reserve_at(Duration::ZERO, later),
            Some(Duration::ZERO)
        );
    }
}
