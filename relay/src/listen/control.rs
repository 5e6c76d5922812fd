//! An authenticated agent's control stream, for the session's life: the
//! hello puts the session in the table, heartbeats carry its RTT, node
//! updates its daemon's state, and renewals get it a new certificate.
//! A connection that asks for a daemon certificate instead of saying
//! hello gets one and ends (an errand, never a session).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use tunnelgate_proto::control::{RelayControl, RelayEvent};
use tunnelgate_proto::frame::FrameError;
use tunnelgate_proto::message::{DaemonCertSigned, MessageError, RefusalCode, SignDaemonCert};
use tunnelgate_proto::NodeKey;
use tunnelgate_session::{driver, tls, Session, Stream};

use super::Context;
use crate::identity::{renew_in, renewal_delay};
use crate::metrics::{Handshake, Limit};
use crate::sessions::{ControlCommand, Entry, NodeInfo, Removed};
use crate::state::CertMode;

/// Runs an authenticated agent's control stream for the session's life.
pub(super) async fn run(
    session: Session,
    mut control: Stream,
    key: NodeKey,
    cert: tls::Subject,
    ctx: Arc<Context>,
    cancel: CancellationToken,
) {
    let mut machine = RelayControl::new(
        key.node_id.clone(),
        ctx.state.relay_id().clone(),
        ctx.config.heartbeat_interval,
        Instant::now(),
    )
    .with_cert_renewal(renew_in(&cert))
    .with_members(ctx.registry.agent_view());
    let (tx, rx) = mpsc::channel::<ControlCommand>(8);
    let transport = session.transport().as_str();
    let mut entry: Option<Arc<Entry>> = None;
    let result = driver::drive(
        &mut machine,
        &mut control,
        rx,
        |event| match event {
            RelayEvent::Registered(mut hello) => {
                info!(hostname = %hello.hostname, agent_version = %hello.agent_version,
                      daemon_reachable = hello.docker.reachable, %transport, "agent connected");
                // A node's join token decides its labels, so that a scoped
                // key sees only the nodes enrolled for it.
                if let Some(labels) = ctx.state.node_labels(&key) {
                    if hello.labels != labels && !hello.labels.is_empty() {
                        warn!(agent_labels = ?hello.labels, token_labels = ?labels,
                              "the agent's --label flags are ignored: the node keeps the labels of the join token it enrolled with");
                    }
                    hello.labels = labels;
                }
                let info = NodeInfo {
                    docker: hello.docker.clone(),
                    hello: *hello,
                    connected_since: SystemTime::now(),
                    rtt: None,
                };
                let inserted = ctx.sessions.insert(
                    session.clone(),
                    key.clone(),
                    cert.serial.clone(),
                    info,
                    tx.clone(),
                );
                ctx.registry.publish(&key, inserted.epoch);
                entry = Some(inserted);
                ctx.metrics
                    .agents_connected
                    .with_label_values(&[transport])
                    .inc();
                ctx.metrics.handshake(Handshake::Accepted);
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
            RelayEvent::RenewRequested(csr) => renew(&ctx, &key, &csr, tx.clone()),
            RelayEvent::DaemonCertRequested(ask) => sign_daemon_cert(&ctx, &key, ask, &tx),
            RelayEvent::LeaveRequested(leave) => {
                revoke_leaving(&ctx, &key, leave.reason, tx.clone())
            }
        },
        cancel,
    )
    .await;
    if let Some(e) = &entry {
        match ctx.sessions.remove(e) {
            Removed::NotCurrent => {}
            Removed::Last => ctx.registry.withdraw(&key, e.epoch),
            Removed::Fallback(older) => {
                info!("calls go back to the node's older session here");
                ctx.registry.withdraw(&key, e.epoch);
                ctx.registry.publish(&key, older.epoch);
            }
        }
        ctx.metrics
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
                ctx.metrics.limit_hit(Limit::FrameSize);
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

/// Signs a server certificate for the node's Docker daemon and hands it,
/// with the direct-path CA the daemon must trust, to the control machine;
/// a request that cannot be signed is answered with the reason.
fn sign_daemon_cert(
    ctx: &Arc<Context>,
    key: &NodeKey,
    ask: SignDaemonCert,
    tx: &mpsc::Sender<ControlCommand>,
) {
    let names: Vec<String> = ask.dns_names.into_iter().chain(ask.ip_addresses).collect();
    let ttl = ctx.config.daemon_cert_ttl;
    let cmd: ControlCommand =
        match ctx
            .authority
            .issue_daemon_cert(&key.tenant, &key.node_id, &ask.csr_pem, &names, ttl)
        {
            Ok(cert_pem) => {
                info!(names = ?names, "signed a daemon certificate");
                let signed = DaemonCertSigned {
                    cert_pem,
                    client_ca_pem: ctx.authority.direct_ca_pem().to_owned(),
                    renew_in_ms: Some(renewal_delay(ttl).as_millis() as u64),
                };
                Box::new(move |m| m.daemon_cert_signed(signed))
            }
            Err(e) => {
                info!(error = %e, "refused a daemon certificate request");
                let message = format!("cannot sign a daemon certificate: {e}");
                Box::new(move |m| m.fail(RefusalCode::ProtocolViolation, message))
            }
        };
    let _ = tx.try_send(cmd);
}

/// Revokes a node whose host is removing it, on the blocking pool, and
/// answers; the state watcher then drops its sessions everywhere.
fn revoke_leaving(
    ctx: &Arc<Context>,
    key: &NodeKey,
    reason: String,
    tx: mpsc::Sender<ControlCommand>,
) {
    let (state, key) = (ctx.state.clone(), key.clone());
    ctx.tasks.spawn(
        async move {
            let cmd: ControlCommand = match state.revoke_node(&key).await {
                Ok(_) => {
                    info!(%reason, "node revoked at its host's request");
                    Box::new(|m| m.left())
                }
                Err(e) => {
                    warn!(error = %e, "cannot revoke a leaving node");
                    let message = format!("the relay cannot revoke this node ({e}); revoke it there with `tunnelgate-relay node revoke {key}`");
                    Box::new(move |m| m.fail(RefusalCode::Internal, message))
                }
            };
            let _ = tx.send(cmd).await;
        }
        .in_current_span(),
    );
}

/// Signs a renewal CSR, records the new certificate on the blocking pool,
/// and hands it to the control machine. On failure the agent asks again;
/// a revoked node is dropped by the state watcher.
fn renew(ctx: &Arc<Context>, key: &NodeKey, csr: &str, tx: mpsc::Sender<ControlCommand>) {
    let ttl = ctx.config.node_cert_ttl;
    let (pem, serial) = match ctx
        .authority
        .issue_node_cert(&key.tenant, &key.node_id, csr, ttl)
    {
        Ok(issued) => issued,
        Err(e) => return warn!(error = %e, "cannot renew the node certificate"),
    };
    let (state, key) = (ctx.state.clone(), key.clone());
    ctx.tasks.spawn(
        async move {
            match state.record_node_cert(key, serial, CertMode::Renew).await {
                Ok(()) => {
                    info!("node certificate renewed");
                    let cmd: ControlCommand =
                        Box::new(move |m| m.cert_renewed(pem, renewal_delay(ttl)));
                    let _ = tx.try_send(cmd);
                }
                Err(e) => warn!(error = %e, "cannot record the renewed node certificate"),
            }
        }
        .in_current_span(),
    );
}
