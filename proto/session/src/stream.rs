//! A bidirectional byte stream inside a session, whatever the transport.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tunnelgate_proto::frame::{self, FrameError, HEADER_LEN};
use tunnelgate_proto::message::{Message, MessageError};

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A stream could not carry a framed message.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The stream failed or closed.
    #[error("stream failed: {0}")]
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
    recv: BoxRead,
    send: BoxWrite,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl Stream {
    /// Joins a transport's two halves.
    pub fn new(
        recv: impl AsyncRead + Send + Unpin + 'static,
        send: impl AsyncWrite + Send + Unpin + 'static,
    ) -> Self {
        Self {
            recv: Box::new(recv),
            send: Box::new(send),
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
    pub fn into_split(
        self,
    ) -> (
        impl AsyncRead + Send + Unpin,
        impl AsyncWrite + Send + Unpin,
    ) {
        (self.recv, self.send)
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
