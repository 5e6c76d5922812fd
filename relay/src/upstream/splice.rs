//! The end of a call's life: a response body that releases the call's
//! guard when its last byte is relayed, and the byte pipe between a
//! hijacked client connection and a hijacked node stream.
//!
//! Both wind down cleanly when the relay's shutdown grace is over and a
//! long stream (`logs -f`, `attach`, `exec`) is still open: at the first
//! moment the node has been quiet for [`QUIET`] they end as if the node
//! had ended them, a body with its last chunk and a pipe with a
//! half-close, so the client sees a stream that ended, not one cut in the
//! middle of a frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;

/// Bytes per direction the hijack pipe moves at once.
const SPLICE_BUFFER: usize = 64 * 1024;

/// How long a winding-down stream must have had nothing from the node
/// before it ends: the daemon writes each frame at once, so a frame's
/// parts never sit this far apart.
pub const QUIET: Duration = Duration::from_millis(50);

/// A response body from the node that holds `guard` (the call's audit
/// record and concurrency slots) until the body ends or fails.
pub struct Guarded<G> {
    inner: Incoming,
    guard: Option<G>,
    wind_down: Pin<Box<WaitForCancellationFutureOwned>>,
    winding: bool,
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<G> Guarded<G> {
    /// Wraps `inner`; ends it cleanly after `wind_down` fires.
    pub fn new(inner: Incoming, guard: G, wind_down: CancellationToken) -> Self {
        Self {
            inner,
            guard: Some(guard),
            wind_down: Box::pin(wind_down.cancelled_owned()),
            winding: false,
            quiet: None,
        }
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(frame) => {
                if matches!(frame, None | Some(Err(_))) {
                    self.guard = None;
                }
                self.quiet = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !self.winding {
                    if self.wind_down.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.winding = true;
                }
                let quiet = self
                    .quiet
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(QUIET)));
                if quiet.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                debug!("shutdown grace over; ending a long response at a quiet moment");
                self.guard = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Pipes bytes between a hijacked client connection and the hijacked node
/// stream, holding `guard` until both directions end. Each direction ends
/// on its own: a client that half-closes still receives everything the
/// node sends after. After `wind_down`, each direction half-closes at its
/// first quiet moment.
pub async fn splice_upgraded<G>(
    client: hyper::upgrade::OnUpgrade,
    node: hyper::upgrade::OnUpgrade,
    guard: G,
    wind_down: CancellationToken,
) {
    let (client, node) = match tokio::try_join!(client, node) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (client_rx, client_tx) = tokio::io::split(TokioIo::new(client));
    let (node_rx, node_tx) = tokio::io::split(TokioIo::new(node));
    match tokio::try_join!(
        pump(client_rx, node_tx, &wind_down),
        pump(node_rx, client_tx, &wind_down)
    ) {
        Ok((up, down)) => debug!(
            bytes_to_node = up,
            bytes_from_node = down,
            "hijacked stream finished"
        ),
        Err(e) => debug!(error = %e, "hijacked stream failed"),
    }
    drop(guard);
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`. Reads
/// are what wind-down interrupts (a read is cancel-safe), never a write,
/// so no byte read is ever dropped.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    wind_down: &CancellationToken,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; SPLICE_BUFFER];
    let mut total = 0u64;
    loop {
        let n = if wind_down.is_cancelled() {
            match tokio::time::timeout(QUIET, from.read(&mut buf)).await {
                Ok(read) => read?,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                read = from.read(&mut buf) => read?,
                () = wind_down.cancelled() => continue,
            }
        };
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    to.shutdown().await?;
    Ok(total)
}
