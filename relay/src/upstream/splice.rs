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
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::debug;

use super::lean::NodeBody;

/// Bytes per direction the hijack pipe moves at once.
const SPLICE_BUFFER: usize = 64 * 1024;

/// How long a winding-down stream must have had nothing from the node
/// before it ends: the daemon writes each frame at once, so a frame's
/// parts never sit this far apart.
pub const QUIET: Duration = Duration::from_millis(50);

/// How long a stream cut short may take to reach a quiet moment before it
/// ends anyway.
pub const CUT_GRACE: Duration = Duration::from_secs(1);

/// A stream's end before the node ends it, other than the relay's
/// shutdown: its caller's credential stopped standing. When `token` fires
/// the stream ends at its next quiet moment, or after [`CUT_GRACE`], and
/// the client's last bytes are `last_word(first)` (made then, so that it
/// can say why), given the stream's first bytes (up to [`SNIFF`]) to tell
/// how it frames text when its head did not say.
pub struct Cut {
    /// Fires when the stream must end.
    pub token: CancellationToken,
    /// What the client reads last, framed as its stream frames text.
    pub last_word: LastWord,
}

/// Makes a cut stream's last bytes from its first ones.
pub type LastWord = Box<dyn Fn(&[u8]) -> Option<Bytes> + Send + Sync>;

/// How many of a stream's first bytes a [`Cut`] keeps.
pub const SNIFF: usize = 8;

/// A [`Cut`] being waited for by a body.
struct Cutting {
    fired: Pin<Box<WaitForCancellationFutureOwned>>,
    since: Option<tokio::time::Instant>,
    last_word: LastWord,
    first: Option<Bytes>,
}

/// A response body from the node that holds `guard` (the call's audit
/// record and concurrency slots) until the body ends or fails.
pub struct Guarded<G> {
    inner: NodeBody,
    guard: Option<G>,
    wind_down: Pin<Box<WaitForCancellationFutureOwned>>,
    winding: bool,
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: Option<Cutting>,
    done: bool,
}

impl<G> Guarded<G> {
    /// Wraps `inner`; ends it cleanly after `wind_down` fires, or after
    /// `cut` fires, with its last word.
    pub fn new(inner: NodeBody, guard: G, wind_down: CancellationToken, cut: Option<Cut>) -> Self {
        Self {
            inner,
            guard: Some(guard),
            wind_down: Box::pin(wind_down.cancelled_owned()),
            winding: false,
            quiet: None,
            cut: cut.map(|c| Cutting {
                fired: Box::pin(c.token.cancelled_owned()),
                since: None,
                last_word: c.last_word,
                first: None,
            }),
            done: false,
        }
    }

    /// Whether a cut fired; and whether it has waited its grace out.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> (bool, bool) {
        let Some(cut) = &mut self.cut else {
            return (false, false);
        };
        if cut.since.is_none() && cut.fired.as_mut().poll(cx).is_ready() {
            cut.since = Some(tokio::time::Instant::now());
        }
        match cut.since {
            Some(since) => (true, since.elapsed() >= CUT_GRACE),
            None => (false, false),
        }
    }

    /// Ends the body: the cut's last word first, if one fired.
    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.done = true;
        let word = self
            .cut
            .take()
            .filter(|c| c.since.is_some())
            .and_then(|c| (c.last_word)(c.first.as_deref().unwrap_or_default()))
            // Text after a body of a known length would break its framing.
            .filter(|_| self.inner.size_hint().exact().is_none());
        match word {
            Some(word) => Poll::Ready(Some(Ok(Frame::data(word)))),
            None => {
                self.guard = None;
                Poll::Ready(None)
            }
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
        if self.done {
            self.guard = None;
            return Poll::Ready(None);
        }
        let (cutting, overdue) = self.poll_cut(cx);
        if overdue {
            debug!("the caller's credential no longer stands; ending a busy stream");
            return self.end();
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(frame) => {
                if matches!(frame, None | Some(Err(_))) {
                    self.guard = None;
                }
                if let (Some(cut), Some(Ok(frame))) = (&mut self.cut, &frame) {
                    if let (None, Some(data)) = (&cut.first, frame.data_ref()) {
                        cut.first = Some(data.slice(..data.len().min(SNIFF)));
                    }
                }
                self.quiet = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !cutting && !self.winding {
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
                debug!(cutting, "ending a long response at a quiet moment");
                self.end()
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Pipes bytes between a hijacked client connection and the hijacked node
/// stream, holding `guard` until both directions end. Each direction ends
/// on its own: a client that half-closes still receives everything the
/// node sends after. After `wind_down` or `cut`, each direction
/// half-closes at its first quiet moment (or after [`CUT_GRACE`]), and
/// after a cut the client reads its last word first.
pub async fn splice_upgraded<G>(
    client: hyper::upgrade::OnUpgrade,
    node: hyper::upgrade::OnUpgrade,
    guard: G,
    wind_down: CancellationToken,
    cut: Option<Cut>,
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
    let ending = CancellationToken::new();
    let cut_token = cut.as_ref().map(|c| c.token.clone()).unwrap_or_default();
    let last_word = |first: &[u8]| match &cut {
        Some(c) if c.token.is_cancelled() => (c.last_word)(first),
        _ => None,
    };
    let pumps = async {
        tokio::try_join!(
            pump(client_rx, node_tx, &ending, |_: &[u8]| None),
            pump(node_rx, client_tx, &ending, last_word)
        )
    };
    tokio::pin!(pumps);
    let done = tokio::select! {
        done = &mut pumps => done,
        () = async { tokio::select! {
            () = wind_down.cancelled() => {}
            () = cut_token.cancelled() => {}
        } } => {
            ending.cancel();
            pumps.await
        }
    };
    match done {
        Ok((up, down)) => debug!(
            bytes_to_node = up,
            bytes_from_node = down,
            "hijacked stream finished"
        ),
        Err(e) => debug!(error = %e, "hijacked stream failed"),
    }
    drop(guard);
}

/// Copies `from` to `to` until `from` ends, or, once `ending` fires,
/// until `from` is quiet (or [`CUT_GRACE`] passed); then writes
/// `last_word()`, if any, and half-closes `to`. Reads are what ending
/// interrupts (a read is cancel-safe), never a write, so no byte read is
/// ever dropped.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    ending: &CancellationToken,
    last_word: impl Fn(&[u8]) -> Option<Bytes>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; SPLICE_BUFFER];
    let mut first = [0u8; SNIFF];
    let mut total = 0u64;
    let mut ending_since = None;
    loop {
        let n = if ending.is_cancelled() {
            let since = *ending_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= CUT_GRACE {
                break;
            }
            match tokio::time::timeout(QUIET, from.read(&mut buf)).await {
                Ok(read) => read?,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                read = from.read(&mut buf) => read?,
                () = ending.cancelled() => continue,
            }
        };
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        if total < SNIFF as u64 {
            let at = total as usize;
            let take = n.min(SNIFF - at);
            first[at..at + take].copy_from_slice(&buf[..take]);
        }
        total += n as u64;
    }
    let seen = (total as usize).min(SNIFF);
    if let Some(word) = last_word(&first[..seen]) {
        to.write_all(&word).await?;
    }
    to.shutdown().await?;
    Ok(total)
}
