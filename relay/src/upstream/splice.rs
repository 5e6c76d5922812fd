//! The end of a call's life: a response body that releases the call's
//! guard when its last byte is relayed, and the byte pipe between a
//! hijacked client connection and a hijacked node stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tracing::debug;

/// Bytes per direction the hijack pipe moves at once.
const SPLICE_BUFFER: usize = 64 * 1024;

/// A response body from the node that holds `guard` (the call's audit
/// record and concurrency slots) until the body ends or fails.
pub struct Guarded<G> {
    inner: Incoming,
    guard: Option<G>,
}

impl<G> Guarded<G> {
    /// Wraps `inner`.
    pub fn new(inner: Incoming, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
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
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
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
/// node sends after.
pub async fn splice_upgraded<G>(
    client: hyper::upgrade::OnUpgrade,
    node: hyper::upgrade::OnUpgrade,
    guard: G,
) {
    let (client, node) = match tokio::try_join!(client, node) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut node = TokioIo::new(node);
    match tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut node,
        SPLICE_BUFFER,
        SPLICE_BUFFER,
    )
    .await
    {
        Ok((up, down)) => debug!(
            bytes_to_node = up,
            bytes_from_node = down,
            "hijacked stream finished"
        ),
        Err(e) => debug!(error = %e, "hijacked stream failed"),
    }
    drop(guard);
}
