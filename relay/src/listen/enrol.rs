//! First contact: an agent without a node certificate trades a join token
//! and a CSR for one, then reconnects with mTLS.

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{ControlMessage, Enroll, Enrolled, RefusalCode, Refused};
use tunnelgate_proto::NodeKey;
use tunnelgate_session::{Session, Stream, HANDSHAKE_TIMEOUT};

use super::Context;
use crate::identity::Authority;
use crate::metrics::Handshake;
use crate::state::{CertMode, StateError};

/// Answers one enrolment request on `control` and closes the session.
pub(super) async fn enrol(session: Session, mut control: Stream, ctx: &Context) {
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
        Ok(Ok(ControlMessage::Enroll(req))) => issue(ctx, req).await,
        Ok(Ok(_)) => Err(refuse(
            RefusalCode::IdentityMismatch,
            "this connection has no node certificate; enrol with a join token first".into(),
        )),
    };
    let reply = match outcome {
        Ok(enrolled) => {
            ctx.metrics.handshake(Handshake::Enrolled);
            ControlMessage::Enrolled(enrolled)
        }
        Err(refused) => {
            ctx.metrics.handshake(Handshake::Refused);
            info!(reason = %refused.message, "enrolment refused");
            ControlMessage::Refused(refused)
        }
    };
    let write = async {
        control.write_message(&reply, DEFAULT_MAX_FRAME).await?;
        control
            .shutdown()
            .await
            .map_err(tunnelgate_session::StreamError::from)
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, write).await;
    // Let the agent read the answer and close; it then reconnects with mTLS.
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, session.closed()).await;
    session.close("enrolment finished");
}

fn refuse(code: RefusalCode, message: String) -> Refused {
    Refused::new(code, message)
}

/// Checks the token, signs the CSR and records the node.
async fn issue(ctx: &Context, req: Enroll) -> Result<Enrolled, Refused> {
    let store_failed = |e: &dyn std::fmt::Display| {
        warn!(error = %e, "cannot check or record an enrolment: the state dir or etcd failed; the agent will try again");
        refuse(
            RefusalCode::Internal,
            "the relay cannot reach its records (its state dir, or etcd in a cluster) just now; \
             the agent tries again by itself, and the relay's log says what failed"
                .into(),
        )
    };
    // A request the relay cannot sign must not spend a use of the token.
    let key_sha256 = Authority::csr_key_sha256(&req.csr_pem).map_err(|e| {
        refuse(
            RefusalCode::ProtocolViolation,
            format!("cannot read the certificate request: {e}"),
        )
    })?;
    let token = ctx
        .state
        .use_join_token(
            req.token,
            ctx.authority.ca_fingerprint(),
            &req.node_id,
            &key_sha256,
        )
        .await
        .map_err(|e| store_failed(&e))?
        .map_err(|e| refuse(RefusalCode::BadToken, e.to_string()))?;
    let (cert_pem, serial) = ctx
        .authority
        .issue_node_cert(
            &token.tenant,
            &req.node_id,
            &req.csr_pem,
            ctx.config.node_cert_ttl,
        )
        .map_err(|e| {
            refuse(
                RefusalCode::ProtocolViolation,
                format!("cannot issue a certificate: {e}"),
            )
        })?;
    let key = NodeKey {
        tenant: token.tenant.clone(),
        node_id: req.node_id.clone(),
    };
    let mode = CertMode::Enrol {
        token_id: token.id.clone(),
        replace: token.replace,
        labels: token.labels.clone(),
    };
    match ctx.state.record_node_cert(key.clone(), serial, mode).await {
        Ok(()) => {}
        Err(e @ StateError::AlreadyEnrolled(_)) => {
            if let Err(failed) = ctx
                .state
                .give_back_join_token(&token.id, &req.node_id, &key_sha256)
                .await
            {
                warn!(token_id = %token.id, error = %failed,
                      "cannot give back the join token use this refused enrolment spent; `tunnelgate-relay token list` still counts it");
            }
            return Err(refuse(RefusalCode::BadToken, e.to_string()));
        }
        Err(e) => return Err(store_failed(&e)),
    }
    info!(tenant = %key.tenant, node_id = %key.node_id, token_id = %token.id, "node enrolled");
    Ok(Enrolled {
        cert_pem,
        ca_pem: ctx.authority.ca_pem().to_owned(),
    })
}
