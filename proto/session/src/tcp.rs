//! TLS over TCP, multiplexed with yamux: the transport for networks that
//! drop UDP.
//!
//! A yamux connection is a state machine that makes progress only while
//! it is polled, so each session gets one driver task that owns it: the
//! driver accepts inbound streams onto a channel, opens outbound streams on
//! request, and closes the connection when asked or when every handle is
//! gone. [`MuxSession`] is the handle the rest of the code holds.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

use crate::{Stream, HANDSHAKE_TIMEOUT};

/// Streams either side may have open at once in one session.
const MAX_STREAMS: usize = 1024;
/// Cap on the sum of all streams' receive windows. yamux grows each
/// stream's window with its measured bandwidth-delay product, so one bulk
/// stream is not held to the 256 KiB default; the cap bounds what a peer
/// can make us buffer.
const MAX_CONNECTION_WINDOW: usize = 1024 * 1024 * 1024;
/// Bytes per yamux data frame: large frames cut per-frame overhead on
/// bulk transfers; small calls are unaffected.
const SPLIT_SEND_SIZE: usize = 64 * 1024;

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// Which end of the yamux connection this is.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    /// The dialling agent.
    Client,
    /// The relay.
    Server,
}

fn config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(MAX_STREAMS);
    c.set_max_connection_receive_window(Some(MAX_CONNECTION_WINDOW));
    c.set_split_send_size(SPLIT_SEND_SIZE);
    c
}

/// A handle to a yamux session over a TLS/TCP connection.
#[derive(Clone)]
pub struct MuxSession {
    open: mpsc::Sender<OpenReply>,
    // A multi-consumer channel, so clones of the handle share the inbound
    // queue without a lock held across the wait.
    inbound: async_channel::Receiver<yamux::Stream>,
    close: CancellationToken,
    done: CancellationToken,
    end: Arc<Mutex<Option<MuxError>>>,
    remote: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
}

/// Why a yamux session ended, or a stream could not be opened on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MuxError {
    /// The connection failed (IO error, protocol violation by the peer).
    #[error("yamux connection failed: {0}")]
    Failed(Arc<yamux::ConnectionError>),
    /// The peer closed the session.
    #[error("peer closed the session")]
    PeerClosed,
    /// This side closed the session (or dropped every handle).
    #[error("session closed by this side")]
    ClosedHere,
    /// The session is up but refused a new stream (e.g. too many open).
    #[error("opening a stream: {0}")]
    Open(Arc<yamux::ConnectionError>),
}

impl MuxSession {
    /// Starts yamux over an established (TLS) connection and spawns its driver.
    pub fn spawn<T>(
        io: T,
        side: Side,
        remote: SocketAddr,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
    ) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mode = match side {
            Side::Client => yamux::Mode::Client,
            Side::Server => yamux::Mode::Server,
        };
        let conn = yamux::Connection::new(io.compat(), config(), mode);
        let (open_tx, open_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = async_channel::bounded(MAX_STREAMS);
        let close = CancellationToken::new();
        let done = CancellationToken::new();
        let end = Arc::new(Mutex::new(None));
        tokio::spawn({
            let (close, done, end) = (close.clone(), done.clone(), end.clone());
            async move {
                let reason = drive(conn, open_rx, in_tx, close).await;
                *end.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                done.cancel();
            }
        });
        Self {
            open: open_tx,
            inbound: in_rx,
            close,
            done,
            end,
            remote,
            peer_certs,
        }
    }

    fn ended(&self) -> MuxError {
        let reason = self.end.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reason.unwrap_or(MuxError::ClosedHere)
    }

    /// Opens a stream to the peer.
    pub async fn open_stream(&self) -> Result<Stream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.open.send(tx).await.map_err(|_| self.ended())?;
        match rx.await {
            Ok(Ok(s)) => Ok(wrap(s)),
            Ok(Err(e)) => Err(MuxError::Open(Arc::new(e))),
            Err(_) => Err(self.ended()),
        }
    }

    /// Waits for the peer to open a stream. Cancel-safe.
    pub async fn accept_stream(&self) -> Result<Stream, MuxError> {
        match self.inbound.recv().await {
            Ok(s) => Ok(wrap(s)),
            Err(async_channel::RecvError) => Err(self.ended()),
        }
    }

    /// Closes the session; open streams fail.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<MuxError> {
        self.done.is_cancelled().then(|| self.ended())
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) -> MuxError {
        self.done.cancelled().await;
        self.ended()
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The peer's certificate chain, if it presented one.
    pub fn peer_certificates(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.peer_certs.clone()
    }
}

fn wrap(s: yamux::Stream) -> Stream {
    let (r, w) = tokio::io::split(s.compat());
    Stream::new(r, w)
}

/// Polls the connection until it ends; returns why, for the log.
async fn drive<T>(
    mut conn: yamux::Connection<T>,
    mut open: mpsc::Receiver<OpenReply>,
    inbound: async_channel::Sender<yamux::Stream>,
    close: CancellationToken,
) -> MuxError
where
    T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin,
{
    let mut pending: Option<OpenReply> = None;
    let mut handles_gone = false;
    let closing = close.cancelled();
    tokio::pin!(closing);
    let reason = poll_fn(|cx| {
        if closing.as_mut().poll(cx).is_ready() || handles_gone {
            return Poll::Ready(None);
        }
        // Outbound: one open request at a time, in order.
        loop {
            if pending.is_none() {
                match open.poll_recv(cx) {
                    Poll::Ready(Some(req)) => pending = Some(req),
                    Poll::Ready(None) => {
                        handles_gone = true;
                        return Poll::Ready(None);
                    }
                    Poll::Pending => break,
                }
            }
            let Some(req) = pending.take() else { break };
            match conn.poll_new_outbound(cx) {
                Poll::Ready(result) => {
                    let _ = req.send(result);
                }
                Poll::Pending => {
                    pending = Some(req);
                    break;
                }
            }
        }
        // Inbound, which also drives all IO of the connection.
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    // A full queue means nobody accepts: dropping resets the stream.
                    let _ = inbound.try_send(stream);
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(MuxError::Failed(Arc::new(e))))
                }
                Poll::Ready(None) => return Poll::Ready(Some(MuxError::PeerClosed)),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    match reason {
        Some(reason) => reason,
        None => {
            let _ = tokio::time::timeout(Duration::from_secs(2), poll_fn(|cx| conn.poll_close(cx)))
                .await;
            MuxError::ClosedHere
        }
    }
}

/// Dials `addr` over TCP, runs the TLS handshake as `server_name`, and
/// starts yamux as the client.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<MuxSession> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    let tls_stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP/TLS handshake timed out")
        })??;
    Ok(MuxSession::spawn(tls_stream, Side::Client, addr, None))
}

/// Runs the server side of the TLS handshake on an accepted TCP connection
/// and starts yamux as the server.
pub async fn accept(
    tcp: tokio::net::TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
) -> std::io::Result<MuxSession> {
    let remote = tcp.peer_addr()?;
    tcp.set_nodelay(true)?;
    let tls_stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    let certs = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    Ok(MuxSession::spawn(tls_stream, Side::Server, remote, certs))
}
