//! The tokio layer both the relay and the agent stand on.
//!
//! It turns a transport connection into a [`Session`] that opens and
//! accepts bidirectional [`Stream`]s, builds the rustls configurations both
//! sides use ([`tls`]), sets up QUIC endpoints ([`quic`]) and drives a
//! `tunnelgate-proto` control machine over a stream ([`driver`]).
//!
//! It must not know about HTTP, Docker or etcd: whatever runs inside a
//! stream is the caller's business.
#![warn(missing_docs)]

pub mod config;
pub mod driver;
pub mod files;
pub mod pipe;
#[cfg(feature = "process")]
pub mod process;
pub mod quic;
mod session;
mod stream;
pub mod tcp;
pub mod tls;
mod udp;

pub use session::{Session, SessionError, Transport};
pub use stream::{Stream, StreamError, StreamRecv, StreamSend};

/// How long an agent handshake may take, on either side: TCP connect and
/// TLS, or the QUIC handshake, plus the first control message.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ALPN protocol name agents and relays agree on.
pub const ALPN: &[u8] = b"tunnelgate/1";
