//! One agent session: a transport connection that carries many streams.

use std::fmt;
use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;

use crate::tcp::{MuxError, MuxSession};
use crate::Stream;

/// Which transport carries a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP, multiplexed with yamux.
    Tcp,
}

impl Transport {
    /// The name used in the node list and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session could not open or accept a stream.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The QUIC connection is gone.
    #[error("session lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    /// The yamux session over TLS/TCP is gone.
    #[error("session lost: {0}")]
    Mux(#[from] MuxError),
}

impl SessionError {
    /// Whether the peer answered with a stateless reset: it no longer
    /// knows this connection (a relay that restarted), so reconnecting at
    /// once will find it.
    pub fn is_stateless_reset(&self) -> bool {
        matches!(self, Self::Lost(quinn::ConnectionError::Reset))
    }
}

/// A live session. Cloning is cheap and yields another handle to the same
/// connection.
#[derive(Clone)]
pub struct Session {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Quic(quinn::Connection),
    Mux(MuxSession),
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("transport", &self.transport())
            .field("remote", &self.remote_addr())
            .finish()
    }
}

impl Session {
    /// Wraps an established QUIC connection.
    pub fn from_quic(conn: quinn::Connection) -> Self {
        Self {
            inner: Inner::Quic(conn),
        }
    }

    /// Wraps an established yamux session over TLS/TCP.
    pub fn from_mux(mux: MuxSession) -> Self {
        Self {
            inner: Inner::Mux(mux),
        }
    }

    /// The transport under this session.
    pub fn transport(&self) -> Transport {
        match &self.inner {
            Inner::Quic(_) => Transport::Quic,
            Inner::Mux(_) => Transport::Tcp,
        }
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(c) => c.remote_address(),
            Inner::Mux(m) => m.remote_addr(),
        }
    }

    /// The certificate chain the peer authenticated with, if any.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        match &self.inner {
            Inner::Quic(c) => c
                .peer_identity()?
                .downcast::<Vec<CertificateDer<'static>>>()
                .ok()
                .map(|b| *b),
            Inner::Mux(m) => m.peer_certificates(),
        }
    }

    /// Opens a new stream to the peer.
    ///
    /// Cancel-safe: a stream not yet returned is never seen by the peer.
    pub async fn open_stream(&self) -> Result<Stream, SessionError> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.open_bi().await?;
                Ok(Stream::from_quic(recv, send))
            }
            Inner::Mux(m) => Ok(m.open_stream().await?),
        }
    }

    /// Waits for the peer to open a stream.
    ///
    /// Cancel-safe.
    pub async fn accept_stream(&self) -> Result<Stream, SessionError> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.accept_bi().await?;
                Ok(Stream::from_quic(recv, send))
            }
            Inner::Mux(m) => Ok(m.accept_stream().await?),
        }
    }

    /// Closes the session at once; open streams fail. `reason` reaches the peer.
    pub fn close(&self, reason: &str) {
        match &self.inner {
            Inner::Quic(c) => c.close(0u32.into(), reason.as_bytes()),
            Inner::Mux(m) => m.close(),
        }
    }

    /// Resolves when the session has ended, for whatever reason.
    pub async fn closed(&self) -> SessionError {
        match &self.inner {
            Inner::Quic(c) => SessionError::Lost(c.closed().await),
            Inner::Mux(m) => SessionError::Mux(m.closed().await),
        }
    }

    /// Why the session ended, once it has; `None` while it is up.
    pub fn end_reason(&self) -> Option<SessionError> {
        match &self.inner {
            Inner::Quic(c) => c.close_reason().map(SessionError::Lost),
            Inner::Mux(m) => m.end_reason().map(SessionError::Mux),
        }
    }

    /// The transport's own round-trip estimate, where it has one.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        match &self.inner {
            Inner::Quic(c) => Some(c.rtt()),
            Inner::Mux(_) => None,
        }
    }
}
