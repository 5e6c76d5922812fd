//! A stream to a node as a call uses it: counts relayed bytes for the
//! metrics and for the audit lines of the calls it carries (one, or several
//! in turn when a client connection's calls reuse it), cuts it when no
//! byte has moved either way for the idle timeout, and holds a token of
//! the relay's call tracker while it is open, so a draining relay waits
//! for the last one to close instead of polling a gauge.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::audit::StreamBytes;
use crate::metrics::{Limit, Metrics};

/// A stream to a node with its byte counts and idle timer.
pub struct CallStream<S> {
    inner: S,
    metrics: Arc<Metrics>,
    to_node: prometheus::IntCounter,
    from_node: prometheus::IntCounter,
    bytes: Arc<StreamBytes>,
    idle_timeout: Duration,
    last_activity: Instant,
    idle: Pin<Box<Sleep>>,
    _open: TaskTrackerToken,
}

impl<S> CallStream<S> {
    /// Starts counting; the stream counts as open (in the metrics and as
    /// the token `open`) until dropped.
    pub fn new(
        inner: S,
        metrics: Arc<Metrics>,
        idle_timeout: Duration,
        open: TaskTrackerToken,
    ) -> Self {
        metrics.streams_open.inc();
        metrics.streams_opened.inc();
        let now = Instant::now();
        Self {
            to_node: metrics.bytes.with_label_values(&["to_node"]),
            from_node: metrics.bytes.with_label_values(&["from_node"]),
            inner,
            metrics,
            bytes: Arc::default(),
            idle_timeout,
            last_activity: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            _open: open,
        }
    }

    /// The stream's byte counts, shared.
    pub fn bytes(&self) -> Arc<StreamBytes> {
        self.bytes.clone()
    }

    /// Whether the stream has been idle too long; re-arms the timer (to the
    /// last activity plus the timeout) when it has not. Only when its timer
    /// fires, so busy streams pay no timer work per byte.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.idle_timeout;
            if deadline <= Instant::now() {
                self.metrics.limit_hit(Limit::IdleStream);
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no bytes moved either way for {:?} (the relay's idle stream timeout)",
                        self.idle_timeout
                    ),
                ));
            }
            self.idle.as_mut().reset(deadline);
        }
    }

    fn sent(&mut self, n: usize) {
        if n > 0 {
            self.last_activity = Instant::now();
            self.to_node.inc_by(n as u64);
            self.bytes.to_node.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl<S> Drop for CallStream<S> {
    fn drop(&mut self) {
        self.metrics.streams_open.dec();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CallStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(res) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.last_activity = Instant::now();
                    self.from_node.inc_by(n as u64);
                    self.bytes.from_node.fetch_add(n as u64, Ordering::Relaxed);
                }
                Poll::Ready(res)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CallStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.sent(n);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            self.sent(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
