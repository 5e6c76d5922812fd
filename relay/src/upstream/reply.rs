//! Pipelined stream setup: the front sends the request right behind the
//! stream header instead of waiting a round trip for the agent's answer.
//!
//! The agent still answers (accept, or a typed refusal) before it lets any
//! byte reach the daemon; [`ReplyFirst`] reads that answer off the front of
//! the stream before anything else is read, so HTTP on top never sees it.
//! A refusal or a silent agent surfaces as an IO error carrying
//! [`SetupError`], which the tunnel finds again by walking `source()`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tunnelgate_proto::frame::{self, DEFAULT_MAX_FRAME};
use tunnelgate_proto::message::{Message, StreamReply};

use crate::error::SetupError;

/// Finds a [`SetupError`] among the causes of `err`.
pub fn find_setup_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a SetupError> {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<SetupError>() {
            return Some(found);
        }
        // io::Error hides its payload from source(); look inside.
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<SetupError>())
        {
            return Some(found);
        }
        cause = e.source();
    }
    None
}

enum State {
    Waiting,
    Accepted,
    Failed(SetupError),
}

/// Wraps a call's stream: reads come after the agent's reply; writes go
/// out at once.
pub struct ReplyFirst<S> {
    inner: S,
    state: State,
    buf: BytesMut,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> ReplyFirst<S> {
    /// Expects the agent's reply within `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            state: State::Waiting,
            buf: BytesMut::new(),
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

fn to_io(e: SetupError) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + Unpin> ReplyFirst<S> {
    /// Resolves once the reply is known: `Ok` when accepted.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &self.state {
                State::Accepted => return Poll::Ready(Ok(())),
                State::Failed(e) => return Poll::Ready(Err(to_io(e.clone()))),
                State::Waiting => {}
            }
            match frame::decode(&mut self.buf, DEFAULT_MAX_FRAME) {
                Ok(Some(payload)) => {
                    self.state = match StreamReply::decode(&payload) {
                        Ok(StreamReply::Accept) => State::Accepted,
                        Ok(StreamReply::Error { code, message }) => {
                            State::Failed(SetupError::Refused { code, message })
                        }
                        Err(e) => State::Failed(SetupError::Invalid(e.to_string())),
                    };
                    continue;
                }
                Err(e) => {
                    self.state = State::Failed(SetupError::Invalid(e.to_string()));
                    continue;
                }
                Ok(None) => {}
            }
            if self.deadline.as_mut().poll(cx).is_ready() {
                self.state = State::Failed(SetupError::Silent(self.timeout));
                continue;
            }
            let mut chunk = [0u8; 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                self.state = State::Failed(SetupError::Closed);
                continue;
            }
            self.buf.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReplyFirst<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_reply(cx))?;
        if !this.buf.is_empty() {
            // Bytes that arrived behind the reply come first.
            let n = this.buf.len().min(out.remaining());
            out.put_slice(&this.buf[..n]);
            this.buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ReplyFirst<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // A refusal that has arrived wins over whatever error the write
        // would meet (the agent stops reading a refused stream).
        if let State::Waiting = this.state {
            if let Poll::Ready(Err(e)) = this.poll_reply(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if let State::Failed(e) = &this.state {
            return Poll::Ready(Err(to_io(e.clone())));
        }
        Pin::new(&mut this.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tunnelgate_proto::message::StreamErrorCode;

    fn reply_frame(reply: &StreamReply) -> Vec<u8> {
        let mut b = BytesMut::new();
        reply.encode_frame(DEFAULT_MAX_FRAME, &mut b).unwrap();
        b.to_vec()
    }

    #[tokio::test]
    async fn bytes_behind_an_accept_are_read_and_writes_go_out_before_it() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut s = ReplyFirst::new(near, Duration::from_secs(5));
        // Pipelined: the request goes out before any answer.
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut req = [0u8; 18];
        far.read_exact(&mut req).await.unwrap();
        let mut answer = reply_frame(&StreamReply::Accept);
        answer.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        far.write_all(&answer).await.unwrap();
        drop(far);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n");
    }

    #[tokio::test]
    async fn a_refusal_is_an_io_error_carrying_it() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut s = ReplyFirst::new(near, Duration::from_secs(5));
        let refusal = StreamReply::Error {
            code: StreamErrorCode::DaemonUnreachable,
            message: "no daemon".into(),
        };
        far.write_all(&reply_frame(&refusal)).await.unwrap();
        let err = s.read(&mut [0u8; 8]).await.unwrap_err();
        let found = find_setup_error(&err).expect("setup error inside");
        assert!(matches!(
            found,
            SetupError::Refused {
                code: StreamErrorCode::DaemonUnreachable,
                ..
            }
        ));
        // Writes see the refusal too, rather than a broken pipe.
        let werr = s.write_all(b"more").await.unwrap_err();
        assert!(find_setup_error(&werr).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_agent_times_out() {
        let (near, _far) = tokio::io::duplex(4096);
        let mut s = ReplyFirst::new(near, Duration::from_secs(15));
        let err = s.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(
            find_setup_error(&err),
            Some(&SetupError::Silent(Duration::from_secs(15)))
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_a_reply_is_invalid() {
        let (near, mut far) = tokio::io::duplex(4096);
        let mut s = ReplyFirst::new(near, Duration::from_secs(5));
        far.write_all(&[0, 0, 0, 3, b'x', b'y', b'z'])
            .await
            .unwrap();
        let err = s.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(matches!(
            find_setup_error(&err),
            Some(SetupError::Invalid(_))
        ));
    }
}
