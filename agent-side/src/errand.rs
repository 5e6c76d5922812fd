//! One request to a relay on a connection made for it alone, authenticated
//! with the node certificate (enrolling first with the token if the node
//! has none): a daemon certificate, or leaving. Never a session: the relay
//! answers and the connection closes.

use std::time::Duration;

use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::ControlMessage;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::identity::{self, NodeIdentity};
use crate::transport;

/// How long the relay may take to answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `ask` to `relay` and returns its answer.
pub async fn ask(
    config: &AgentConfig,
    relay: &str,
    ask: &ControlMessage,
) -> Result<ControlMessage, AgentError> {
    let identity = match NodeIdentity::load(&config.state_dir)? {
        Some(id) => id,
        None => identity::enrol(config, relay).await?,
    };
    identity.check_node(&config.node_id)?;
    let creds = identity.credentials()?.for_one_answer();
    let (session, _) = transport::dial(config, relay, &creds).await?;
    let lost = |e: &dyn std::fmt::Display| AgentError::Errand(format!("{relay}: {e}"));
    let exchange = async {
        let mut control = session.open_stream().await.map_err(|e| lost(&e))?;
        control
            .write_message(ask, DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| lost(&e))?;
        control
            .read_message::<ControlMessage>(DEFAULT_MAX_FRAME)
            .await
            .map_err(|e| lost(&e))
    };
    let reply = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| lost(&format!("no answer within {ANSWER_TIMEOUT:?}")));
    session.close("errand done");
    reply?
}

/// Sends `message` to the configured relays in turn until one answers;
/// setup errors (no identity, a bad token) end it at once.
pub async fn ask_any(
    config: &AgentConfig,
    message: &ControlMessage,
) -> Result<ControlMessage, AgentError> {
    let mut last = None;
    for relay in &config.relays {
        match ask(config, relay, message).await {
            Ok(reply) => return Ok(reply),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::info!(%relay, error = %e, "no answer from this relay; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| AgentError::Errand("no relay configured".into())))
}
