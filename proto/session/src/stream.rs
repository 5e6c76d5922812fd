//! A bidirectional byte stream inside a session, whatever the transport.
//!
//! Besides `AsyncWrite`, a stream's write half takes whole chunks
//! ([`StreamSend::write_chunk`]), which QUIC keeps without a copy: what a
//! pipe from a socket into a stream should use. Copying through
//! `AsyncWrite` into a QUIC stream cost a quarter more CPU per byte than
//! handing it chunks (`session-perf` in the benches).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tunnelgate_proto::frame::{self, FrameError, HEADER_LEN};
use tunnelgate_proto::message::{Message, MessageError};

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A stream could not carry a framed message.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream failed or closed.
    #[error("stream failed: {}", with_causes(.0))]
    Io(#[from] io::Error),
    /// The peer sent something that is not a valid message.
    #[error(transparent)]
    Message(#[from] MessageError),
}

impl From<FrameError> for StreamError {
    fn from(e: FrameError) -> Self {
        Self::Message(e.into())
    }
}

/// `e` and what caused it: QUIC's "connection lost" says why only in its
/// source (timed out, closed by the peer and its reason, ...), which an
/// operator needs to tell a stalled peer from one that hung up.
pub(crate) fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

impl StreamError {
    /// Whether the peer closed or reset the stream, as opposed to sending garbage.
    pub fn is_io(&self) -> bool {
        matches!(self, Self::Io(_))
    }
}

/// One bidirectional stream. Shutting down the write side sends a
/// half-close the peer sees as end of file; reads go on until the peer
/// closes its side too.
pub struct Stream {
    recv: StreamRecv,
    send: StreamSend,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

/// A stream's read half.
pub enum StreamRecv {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// Any other byte stream (a yamux stream, a test pipe).
    Bytes(BoxRead),
}

/// A stream's write half.
pub enum StreamSend {
    /// A QUIC stream, which takes chunks without a copy.
    Quic(quinn::SendStream),
    /// Any other byte stream.
    Bytes(BoxWrite),
}

impl StreamSend {
    /// Writes `chunk` whole; over QUIC the stream keeps it as it is.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        match self {
            Self::Quic(w) => w.write_chunk(chunk).await.map_err(io::Error::from),
            Self::Bytes(w) => w.write_all(&chunk).await,
        }
    }
}

impl Stream {
    /// Joins a transport's two halves.
    pub fn new(
        recv: impl AsyncRead + Send + Unpin + 'static,
        send: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        Self {
            recv: StreamRecv::Bytes(Box::new(recv)),
            send: StreamSend::Bytes(Box::new(send)),
        }
    }

    /// A QUIC stream's two halves.
    pub fn from_quic(recv: quinn::RecvStream, send: quinn::SendStream) -> Self {
        Self {
            recv: StreamRecv::Quic(recv),
            send: StreamSend::Quic(send),
        }
    }

    /// Writes one message as a frame and flushes it.
    pub async fn write_message<M: Message>(
        &mut self,
        msg: &M,
        max: usize,
    ) -> Result<(), StreamError> {
        let mut buf = BytesMut::new();
        msg.encode_frame(max, &mut buf)?;
        self.send.write_all(&buf).await?;
        self.send.flush().await?;
        Ok(())
    }

    /// Reads exactly one framed message and nothing after it, so the stream
    /// can turn into a byte pipe right after.
    ///
    /// Not cancel-safe: a frame half read is lost.
    pub async fn read_message<M: Message>(&mut self, max: usize) -> Result<M, StreamError> {
        let mut header = [0u8; HEADER_LEN];
        self.recv.read_exact(&mut header).await?;
        let len = frame::payload_len(header, max)?;
        let mut payload = vec![0u8; len];
        self.recv.read_exact(&mut payload).await?;
        Ok(M::decode(&payload)?)
    }

    /// Splits into read and write halves that can be used from two tasks.
    pub fn into_split(self) -> (StreamRecv, StreamSend) {
        (self.recv, self.send)
    }
}

impl AsyncRead for StreamRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(r) => Pin::new(r).poll_read(cx, buf),
            Self::Bytes(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for StreamSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(w) => Pin::new(w).poll_write(cx, buf).map_err(io::Error::from),
            Self::Bytes(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(w) => Pin::new(w).poll_flush(cx),
            Self::Bytes(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Quic(w) => Pin::new(w).poll_shutdown(cx),
            Self::Bytes(w) => Pin::new(w).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Quic(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            Self::Bytes(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Quic(w) => w.is_write_vectored(),
            Self::Bytes(w) => w.is_write_vectored(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.send.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunnelgate_proto::message::StreamReply;

    fn pipe() -> (Stream, Stream) {
        let (a, b) = tokio::io::duplex(1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (Stream::new(ar, aw), Stream::new(br, bw))
    }

    #[tokio::test]
    async fn a_message_is_read_without_eating_the_bytes_after_it() {
        let (mut a, mut b) = pipe();
        a.write_message(&StreamReply::Accept, 1024).await.unwrap();
        a.write_all(b"raw bytes").await.unwrap();
        a.shutdown().await.unwrap();
        assert_eq!(
            b.read_message::<StreamReply>(1024).await.unwrap(),
            StreamReply::Accept
        );
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"raw bytes");
    }

    #[test]
    fn a_lost_quic_connection_says_why_it_was_lost() {
        let lost = |cause| {
            let read = quinn::ReadError::ConnectionLost(cause);
            StreamError::from(io::Error::from(read)).to_string()
        };
        assert_eq!(
            lost(quinn::ConnectionError::TimedOut),
            "stream failed: connection lost: timed out"
        );
        let closed = lost(quinn::ConnectionError::ApplicationClosed(
            quinn::ApplicationClose {
                error_code: 0u32.into(),
                reason: "relay shutting down".into(),
            },
        ));
        assert!(closed.contains("relay shutting down"), "{closed}");
        let control = crate::driver::DriveError::from(io::Error::from(
            quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut),
        ));
        assert_eq!(
            control.to_string(),
            "control stream failed: connection lost: timed out"
        );
        // An error with nothing behind it reads as before.
        assert_eq!(
            StreamError::from(io::Error::from(io::ErrorKind::UnexpectedEof)).to_string(),
            "stream failed: unexpected end of file"
        );
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_message_errors() {
        let (mut a, mut b) = pipe();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = b.read_message::<StreamReply>(1024).await.unwrap_err();
        assert!(!err.is_io(), "{err}");

        let (mut a, mut b) = pipe();
        a.write_all(&[0, 0, 0, 3, b'x', b'y', b'z']).await.unwrap();
        assert!(matches!(
            b.read_message::<StreamReply>(1024).await,
            Err(StreamError::Message(_))
        ));

        let (mut a, mut b) = pipe();
        a.write_all(&[0, 0, 0, 30, b'{']).await.unwrap();
        a.shutdown().await.unwrap();
        assert!(b
            .read_message::<StreamReply>(1024)
            .await
            .unwrap_err()
            .is_io());
    }
}
