//! Dialling the relay: QUIC, TLS/TCP with yamux, or both raced.
//!
//! `auto` starts QUIC and gives it a head start; if no QUIC handshake has
//! completed by then (UDP blocked, or just slow), it races TCP and keeps
//! whichever authenticates first. A QUIC that fails outright hands over to
//! TCP at once. The caller re-probes QUIC later while on TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tunnelgate_session::tls::{self, Identity, Trust};
use tunnelgate_session::{Session, HANDSHAKE_TIMEOUT};

use crate::config::AgentConfig;
use crate::config::TransportChoice;
use crate::error::AgentError;

/// How long QUIC may try alone before TCP joins the race.
pub const QUIC_HEAD_START: Duration = Duration::from_millis(300);
/// TLS settings for one connection attempt.
#[derive(Clone)]
pub struct Credentials {
    tls: Arc<rustls::ClientConfig>,
    one_answer: bool,
}

impl Credentials {
    /// Trust `trust`; present `identity` if given (else this is enrolment).
    pub fn new(trust: Trust, identity: Option<Identity>) -> Result<Self, AgentError> {
        let tls = tls::client_config(trust, identity).map_err(AgentError::Tls)?;
        Ok(Self {
            tls: Arc::new(tls),
            one_answer: false,
        })
    }

    /// For a connection that asks one thing and waits for the answer (an
    /// enrolment, an errand), however long the relay takes: over QUIC it
    /// keeps itself alive while it waits, where a session relies on its
    /// heartbeats.
    pub fn for_one_answer(mut self) -> Self {
        self.one_answer = true;
        self
    }
}

async fn resolve(relay: &str) -> Result<(SocketAddr, String), AgentError> {
    let host = relay
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(relay)
        .to_owned();
    let addr = tokio::net::lookup_host(relay)
        .await
        .map_err(|source| AgentError::Resolve {
            relay: relay.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| AgentError::NoAddress(relay.to_owned()))?;
    Ok((addr, host))
}

/// Dials over QUIC only.
pub async fn dial_quic(
    config: &AgentConfig,
    relay: &str,
    creds: &Credentials,
) -> Result<Session, AgentError> {
    let (addr, host) = resolve(relay).await?;
    let tls = (*creds.tls).clone();
    let client = match creds.one_answer {
        true => tunnelgate_session::quic::answer_client_config(tls),
        false => tunnelgate_session::quic::client_config(tls),
    }
    .map_err(AgentError::QuicConfig)?;
    let endpoint = match &config.quic_endpoint {
        Some(shared) => shared.clone(),
        None => tunnelgate_session::quic::client_endpoint(addr).map_err(AgentError::UdpSocket)?,
    };
    let connecting = endpoint
        .connect_with(client, addr, &host)
        .map_err(|source| AgentError::QuicDial {
            relay: relay.to_owned(),
            source,
        })?;
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
        .await
        .map_err(|_| AgentError::QuicSilent {
            relay: relay.to_owned(),
            timeout: HANDSHAKE_TIMEOUT,
        })?
        .map_err(|source| AgentError::QuicHandshake {
            relay: relay.to_owned(),
            source,
        })?;
    Ok(Session::from_quic(conn))
}

/// Dials over TLS/TCP with yamux only.
pub async fn dial_tcp(relay: &str, creds: &Credentials) -> Result<Session, AgentError> {
    let (addr, host) = resolve(relay).await?;
    let mux = tunnelgate_session::tcp::connect(addr, &host, creds.tls.clone())
        .await
        .map_err(|source| AgentError::TcpConnect {
            relay: relay.to_owned(),
            source,
        })?;
    Ok(Session::from_mux(mux))
}

/// Dials `relay` as `config.transport` says; returns the session and why
/// that transport was chosen, for the log.
pub async fn dial(
    config: &AgentConfig,
    relay: &str,
    creds: &Credentials,
) -> Result<(Session, String), AgentError> {
    match config.transport {
        TransportChoice::Quic => Ok((
            dial_quic(config, relay, creds).await?,
            "--transport quic".into(),
        )),
        TransportChoice::Tcp => Ok((dial_tcp(relay, creds).await?, "--transport tcp".into())),
        TransportChoice::Auto => race(config, relay, creds).await,
    }
}

async fn race(
    config: &AgentConfig,
    relay: &str,
    creds: &Credentials,
) -> Result<(Session, String), AgentError> {
    let quic = dial_quic(config, relay, creds);
    tokio::pin!(quic);
    let quic_error = tokio::select! {
        r = &mut quic => match r {
            Ok(s) => return Ok((s, "QUIC handshake completed first".into())),
            Err(e) => Some(e),
        },
        () = tokio::time::sleep(QUIC_HEAD_START) => None,
    };
    let tcp = dial_tcp(relay, creds);
    tokio::pin!(tcp);
    if let Some(e) = quic_error {
        let s = tcp.await?;
        return Ok((s, format!("QUIC failed ({e}); using TLS/TCP")));
    }
    tokio::select! {
        r = &mut quic => match r {
            Ok(s) => Ok((s, "QUIC handshake completed first".into())),
            Err(e) => Ok((tcp.await?, format!("QUIC failed ({e}); using TLS/TCP"))),
        },
        r = &mut tcp => match r {
            Ok(s) => Ok((s, format!("no QUIC handshake within {QUIC_HEAD_START:?} (UDP may be blocked); TLS/TCP won the race"))),
            Err(e) => {
                tracing::debug!(error = %e, "TCP lost the race by failing; waiting for QUIC");
                Ok((quic.await?, "QUIC handshake completed (TCP failed)".into()))
            }
        },
    }
}
