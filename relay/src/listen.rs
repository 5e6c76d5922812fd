//! The agent listener: accepts agent sessions over QUIC (UDP) and TLS/TCP
//! with yamux on the same port number, enrols new agents ([`enrol`]),
//! runs each session's control stream ([`control`]) and keeps the session
//! table current. Past the handshake nothing here knows which transport
//! carries a session.
//!
//! ```text
//! QUIC or TLS handshake ── no client cert ──► control stream: Enroll ─► Enrolled | Refused, close
//!        └──────────────── node cert ───────► record check (enrolled, not revoked, current serial)
//!                                             control stream: Hello ──► Welcome ─► in session table
//!                                             heartbeats, certificate renewals … until lost,
//!                                             replaced, drained or revoked
//! ```
//!
//! New handshakes beyond `max_agent_handshakes_per_sec` wait their turn
//! for up to [`HANDSHAKE_QUEUE`], and past that are refused before any
//! cryptography ([`budget`]), so a reconnect storm after a restart cannot
//! starve the sessions and calls already running; the refused agents
//! retry with backoff and jitter. The record check reads the state cache,
//! never the disk.

mod budget;
mod control;
mod enrol;
pub mod peer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, Instrument};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{BusyHint, ControlMessage, RefusalCode, Refused, RelayMember};
use tunnelgate_proto::rendezvous;
use tunnelgate_proto::{NodeId, NodeKey};
use tunnelgate_session::{tls, Session, Stream, HANDSHAKE_TIMEOUT};

pub use budget::{HandshakeBudget, HANDSHAKE_QUEUE};

use crate::config::Config;
use crate::identity::Authority;
use crate::metrics::{Handshake, Limit, Metrics};
use crate::net::accept_tcp;
use crate::registry::Registry;
use crate::sessions::Sessions;
use crate::state::{rfc3339, NodeStatus, State};

/// What the agent listener works with.
#[derive(Debug)]
pub struct Context {
    /// The relay's settings.
    pub config: Arc<Config>,
    /// Node records, join tokens.
    pub state: Arc<State>,
    /// The CA, for node certificates.
    pub authority: Arc<Authority>,
    /// Where authenticated sessions go.
    pub sessions: Arc<Sessions>,
    /// Where the cluster learns which relay holds which node.
    pub registry: Arc<Registry>,
    /// Handshake and session counts.
    pub metrics: Arc<Metrics>,
    /// New agent handshakes allowed now.
    pub budget: HandshakeBudget,
    /// Handshakes beyond the budget that are still completed, only to
    /// tell the agent where to go instead and when to come back; the rest
    /// are refused without a word.
    pub busy_replies: HandshakeBudget,
    /// Where background work for a session (renewals) runs.
    pub tasks: TaskTracker,
}

/// Accepts QUIC agent sessions until `stop_accepting` fires (a draining
/// relay takes no new agents); each session runs until `cancel`.
pub async fn run_quic(
    endpoint: quinn::Endpoint,
    ctx: Arc<Context>,
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
        let Some(wait) = ctx.budget.reserve(HANDSHAKE_QUEUE) else {
            ctx.metrics.limit_hit(Limit::AgentHandshakes);
            if ctx.busy_replies.reserve(Duration::ZERO).is_none() {
                incoming.refuse();
                continue;
            }
            let ctx = ctx.clone();
            tracker.spawn(async move {
                if let Ok(Ok(conn)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    tell_busy(Session::from_quic(conn), &ctx).await;
                }
            });
            continue;
        };
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        let span = info_span!("conn", peer = %incoming.remote_address(), transport = "quic");
        tracker.spawn(
            async move {
                if !budget::wait_turn(wait, &cancel).await {
                    return;
                }
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        let result = quic_handshake_failure(&e);
                        ctx.metrics.handshake(result);
                        info!(error = %e, result = result.as_str(), "agent QUIC handshake failed");
                        return;
                    }
                    Err(_) => {
                        ctx.metrics.handshake(Handshake::Timeout);
                        debug!("agent handshake timed out");
                        return;
                    }
                };
                serve_session(Session::from_quic(conn), ctx, cancel).await;
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
    ctx: Arc<Context>,
    stop_accepting: CancellationToken,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Some((tcp, peer)) = accept_tcp(&listener, &stop_accepting).await else {
            return;
        };
        let Some(wait) = ctx.budget.reserve(HANDSHAKE_QUEUE) else {
            ctx.metrics.limit_hit(Limit::AgentHandshakes);
            if ctx.busy_replies.reserve(Duration::ZERO).is_none() {
                drop(tcp);
                continue;
            }
            let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
            tracker.spawn(async move {
                if let Ok(mux) = tunnelgate_session::tcp::accept(tcp, &acceptor).await {
                    tell_busy(Session::from_mux(mux), &ctx).await;
                }
            });
            continue;
        };
        let (ctx, cancel, acceptor) = (ctx.clone(), cancel.clone(), acceptor.clone());
        let span = info_span!("conn", %peer, transport = "tcp");
        tracker.spawn(
            async move {
                if !budget::wait_turn(wait, &cancel).await {
                    return;
                }
                match tunnelgate_session::tcp::accept(tcp, &acceptor).await {
                    Ok(mux) => serve_session(Session::from_mux(mux), ctx, cancel).await,
                    Err(e) => {
                        let result = tls_handshake_failure(&e);
                        ctx.metrics.handshake(result);
                        info!(error = %e, result = result.as_str(), "agent TLS handshake failed");
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// How a failed QUIC handshake counts: a certificate or protocol error
/// (either side's) is worth an operator's look; an agent that closed,
/// reset or vanished mid-handshake is not.
fn quic_handshake_failure(e: &quinn::ConnectionError) -> Handshake {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => Handshake::Timeout,
        E::ApplicationClosed(_) | E::Reset | E::LocallyClosed => Handshake::Aborted,
        // A peer that closes with a crypto error refused this relay's
        // certificate or its TLS; any other transport code is a peer
        // that gave up.
        E::ConnectionClosed(c) if !is_crypto_error(c.error_code) => Handshake::Aborted,
        _ => Handshake::TlsFailed,
    }
}

/// Whether a QUIC transport error code carries a TLS alert (RFC 9000
/// section 20.1: `CRYPTO_ERROR` is 0x0100-0x01ff).
fn is_crypto_error(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// How a failed TLS/TCP handshake counts, as for QUIC: a connection
/// closed or reset before the handshake ended (a load balancer's TCP
/// health check does exactly that) is an abort, not a TLS failure.
fn tls_handshake_failure(e: &std::io::Error) -> Handshake {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::TimedOut => Handshake::Timeout,
        K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            Handshake::Aborted
        }
        _ => Handshake::TlsFailed,
    }
}

/// Serves one authenticated transport connection, whatever the transport.
async fn serve_session(session: Session, ctx: Arc<Context>, cancel: CancellationToken) {
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
            ctx.metrics.handshake(Handshake::Timeout);
            session.close("no control stream within the handshake timeout");
            return;
        }
    };
    let Some(subject) = certified else {
        return enrol::enrol(session, control, &ctx).await;
    };
    match check_node_cert(&ctx.state, &subject).await {
        Ok(key) => {
            let span = info_span!("session", tenant = %key.tenant, node_id = %key.node_id);
            control::run(session, control, key, subject, ctx, cancel)
                .instrument(span)
                .await
        }
        Err(refused) => {
            ctx.metrics.handshake(Handshake::Refused);
            info!(node = %subject.name, reason = %refused.message, "agent certificate refused");
            refuse_and_close(session, control, refused).await;
        }
    }
}

/// Whether a node certificate presented by an agent may still be used:
/// its node enrolled, is not revoked, and this is one of its current
/// certificates. The refusal goes to the agent as it is.
async fn check_node_cert(state: &State, subject: &tls::Subject) -> Result<NodeKey, Refused> {
    let refuse = |code, message: String| Refused::new(code, message);
    let mismatch = |message: String| refuse(RefusalCode::IdentityMismatch, message);
    let (Some(tenant), Some(tls::Role::Node), Ok(node_id)) = (
        subject.tenant.clone(),
        subject.role,
        NodeId::new(subject.name.clone()),
    ) else {
        return Err(mismatch(
            "this certificate is not a node certificate of this installation; enrol with a join token"
                .into(),
        ));
    };
    let key = NodeKey { tenant, node_id };
    match state.node_status_for(&key, &subject.serial).await {
        NodeStatus::Revoked(at) => Err(refuse(
            RefusalCode::Revoked,
            format!(
                "node {key} was revoked at {}; enrol it again with a new join token",
                rfc3339(at)
            ),
        )),
        NodeStatus::Enrolled(serials) if serials.contains(&subject.serial) => Ok(key),
        NodeStatus::Enrolled(_) => Err(mismatch(format!(
            "this certificate for node {key} was replaced by a newer one; use the newest node.pem, or enrol again with a new join token"
        ))),
        NodeStatus::Unknown => Err(mismatch(format!(
            "node {key} is not enrolled here (its record is gone); enrol it again with a new join token"
        ))),
    }
}

/// Tells an agent that came over the handshake budget which relay to try
/// instead (the next its own ranking picks) and when to come back here.
async fn tell_busy(session: Session, ctx: &Context) {
    ctx.metrics.handshake(Handshake::Busy);
    let node = session
        .peer_certificates()
        .and_then(|chain| chain.first().and_then(tls::subject))
        .map(|s| s.name);
    let Ok(Ok(control)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, session.accept_stream()).await
    else {
        return;
    };
    let me = ctx.state.relay_id().clone();
    let members = ctx.registry.agent_view();
    let others: Vec<RelayMember> = members
        .iter()
        .filter(|m| m.relay_id != me)
        .cloned()
        .collect();
    // An agent that has not enrolled has no node id yet: rank by its
    // address, which spreads such agents as well.
    let key = node.unwrap_or_else(|| session.remote_addr().to_string());
    let try_instead = rendezvous::choose(&key, &others, 1).into_iter().next();
    let retry_after = ctx
        .budget
        .backlog()
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let message = format!(
        "relay {me} takes no more than {} new agents a second and is at that now; {}",
        ctx.budget.rate(),
        match &try_instead {
            Some(other) =>
                format!("try relay {other} instead, or this one again in {retry_after:?}"),
            None => format!("try again in {retry_after:?}"),
        }
    );
    let refused = Refused {
        code: RefusalCode::Busy,
        message,
        busy: Some(BusyHint {
            relay_id: me,
            retry_after_ms: retry_after.as_millis() as u64,
            try_instead,
            members,
        }),
    };
    refuse_and_close(session, control, refused).await;
}

/// Sends `refused` on the control stream, lets the agent read it, closes.
async fn refuse_and_close(session: Session, mut control: Stream, refused: Refused) {
    let reason = refused.message.clone();
    let write = async {
        control
            .write_message(&ControlMessage::Refused(refused), DEFAULT_MAX_FRAME)
            .await?;
        tokio::io::AsyncWriteExt::shutdown(&mut control)
            .await
            .map_err(tunnelgate_session::StreamError::from)
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, write).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), session.closed()).await;
    session.close(&reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_with(code: quinn::TransportErrorCode) -> quinn::ConnectionError {
        quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: bytes::Bytes::new(),
        })
    }

    #[test]
    fn only_certificate_and_protocol_errors_count_as_failed_handshakes() {
        use quinn::ConnectionError as E;
        use quinn::TransportErrorCode as Code;
        // An agent refusing this relay's certificate closes with a TLS alert.
        assert_eq!(
            quic_handshake_failure(&closed_with(Code::crypto(42))),
            Handshake::TlsFailed
        );
        assert_eq!(
            quic_handshake_failure(&closed_with(Code::NO_ERROR)),
            Handshake::Aborted
        );
        assert_eq!(quic_handshake_failure(&E::Reset), Handshake::Aborted);
        assert_eq!(quic_handshake_failure(&E::TimedOut), Handshake::Timeout);

        let io = |kind| std::io::Error::new(kind, "x");
        use std::io::ErrorKind as K;
        assert_eq!(
            tls_handshake_failure(&io(K::UnexpectedEof)),
            Handshake::Aborted
        );
        assert_eq!(
            tls_handshake_failure(&io(K::ConnectionReset)),
            Handshake::Aborted
        );
        assert_eq!(tls_handshake_failure(&io(K::TimedOut)), Handshake::Timeout);
        assert_eq!(
            tls_handshake_failure(&io(K::InvalidData)),
            Handshake::TlsFailed
        );
    }
}
