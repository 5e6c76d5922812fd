//! The UDP socket under every QUIC endpoint: quinn's tokio socket, but a
//! batch read that comes back short ends the read.
//!
//! quinn reads its socket until a read says "would block". With one
//! datagram per small call, that is two `recvmmsg` per datagram, the
//! second always empty, in the relay and in the agent. A read that filled
//! fewer slots than it had found the kernel's queue empty, so this socket
//! marks itself not readable right then, with the readiness event that
//! the read began from: a datagram that arrived since brought an event of
//! its own, which the mark does not clear, so none is left waiting.
//!
//! Only the readiness bookkeeping differs from quinn's own socket; sends,
//! GSO and GRO are quinn-udp's. Nothing here knows QUIC.

use std::io::{self, IoSliceMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use tokio::io::Interest;

/// quinn's tokio runtime with [`Socket`] for its sockets.
#[derive(Debug)]
pub struct ShortReadRuntime;

impl Runtime for ShortReadRuntime {
    fn new_timer(&self, t: Instant) -> Pin<Box<dyn AsyncTimer>> {
        TokioRuntime.new_timer(t)
    }

    fn spawn(&self, future: Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        TokioRuntime.spawn(future);
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(Socket {
            state: UdpSocketState::new((&sock).into())?,
            io: tokio::net::UdpSocket::from_std(sock)?,
        }))
    }

    fn now(&self) -> Instant {
        TokioRuntime.now()
    }
}

/// A UDP socket whose short batch read ends the read.
#[derive(Debug)]
struct Socket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
}

impl AsyncUdpSocket for Socket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable::new(self))
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&self.io).into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            let mut short = None;
            let read = self.io.try_io(Interest::READABLE, || {
                let n = self.state.recv((&self.io).into(), bufs, meta)?;
                if n < bufs.len() {
                    // The queue was empty when the read ended. "Would
                    // block" has tokio clear the readiness it saw before
                    // the read; a later datagram's event is newer, and
                    // stays.
                    short = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (read, short) {
                (Ok(n), _) | (Err(_), Some(n)) => return Poll::Ready(Ok(n)),
                // As quinn's own socket: an error is read past.
                (Err(_), None) => continue,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Waits until the socket can be written again, for one connection.
///
/// Each connection has its own, so on a relay thousands wait on one
/// socket at once. tokio's `poll_send_ready` keeps only the last waker
/// it was given, which would leave the other connections unwoken when a
/// full send buffer drains; each waits on a `writable()` future of its
/// own instead, as quinn's own poller does.
struct Writable {
    socket: Arc<Socket>,
    waiting: Option<WritableFuture>,
}

type WritableFuture = Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + Sync>>;

impl Writable {
    fn new(socket: Arc<Socket>) -> Self {
        Self {
            socket,
            waiting: None,
        }
    }
}

impl std::fmt::Debug for Writable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writable")
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waiting = this.waiting.get_or_insert_with(|| {
            let socket = this.socket.clone();
            Box::pin(async move { socket.io.writable().await })
        });
        let ready = waiting.as_mut().poll(cx);
        if ready.is_ready() {
            this.waiting = None;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket of ours on loopback, a plain one to send to it, and its
    /// address.
    fn pair() -> (
        Arc<dyn AsyncUdpSocket>,
        std::net::UdpSocket,
        std::net::SocketAddr,
    ) {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let socket = ShortReadRuntime.wrap_udp_socket(rx).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (socket, tx, to)
    }

    /// Datagrams sent while the reader is between reads, after a short
    /// read marked the socket not readable, are all read: none waits for
    /// a datagram after it.
    #[tokio::test(flavor = "current_thread")]
    async fn no_datagram_is_left_behind_by_a_short_read() {
        let (socket, tx, to) = pair();
        let mut slots = vec![[0u8; 1500]; 4];
        let mut got = 0;
        for round in 0..200usize {
            // One, then a burst wider than the batch, in turn.
            let sends = if round % 2 == 0 { 1 } else { 7 };
            for _ in 0..sends {
                tx.send_to(&round.to_le_bytes(), to).unwrap();
            }
            let mut read = 0;
            while read < sends {
                let mut bufs: Vec<IoSliceMut<'_>> =
                    slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
                let mut meta = [RecvMeta::default(); 4];
                let n = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    std::future::poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)),
                )
                .await
                .expect("a sent datagram is read")
                .unwrap();
                read += meta[..n]
                    .iter()
                    .map(|m| m.len / m.stride.max(1))
                    .sum::<usize>();
            }
            got += read;
        }
        assert_eq!(got, 100 + 100 * 7);
    }

    /// After a short read the socket is not read again until an event
    /// says a datagram came: quinn's own socket reads it once more, and
    /// finds nothing, after every datagram.
    #[tokio::test(flavor = "current_thread")]
    async fn a_short_read_ends_the_read_until_the_next_event() {
        let (socket, tx, to) = pair();
        let mut slots = vec![[0u8; 1500]; 4];
        let mut meta = [RecvMeta::default(); 4];
        let mut read = |cx: &mut Context<'_>| {
            let mut bufs: Vec<IoSliceMut<'_>> =
                slots.iter_mut().map(|s| IoSliceMut::new(s)).collect();
            socket
                .poll_recv(cx, &mut bufs, &mut meta)
                .map(|r| r.unwrap())
        };
        tx.send_to(b"one", to).unwrap();
        let n = std::future::poll_fn(|cx| read(cx)).await;
        assert_eq!(n, 1);
        // The second datagram is in the kernel's queue, but its event has
        // not been taken from epoll yet (this one thread has not parked):
        // the socket says so without a read.
        tx.send_to(b"two", to).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(read(&mut cx).is_pending(), "read again after a short read");
        // Once the event is taken, the datagram is read.
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| read(cx)),
        )
        .await
        .expect("the event of the second datagram wakes the reader");
        assert_eq!(n, 1);
    }
}
