//! The bodies of the responses the relay makes itself: the body type every
//! front response has, JSON, and Docker-style errors.

use bytes::Bytes;
use http::header;
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// The response body type of every front response.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// A response with a whole body of `content_type`.
pub fn whole(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .expect("static response parts are valid")
}

/// A JSON response.
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    whole(status, "application/json", Bytes::from(body))
}

/// A Docker-style error: the `docker` CLI prints `message`.
pub fn docker_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, tunnelgate_proto::docker_api::error_body(message))
}

/// The last word of a [`ChannelBody`]: a line its producer leaves for the
/// reader after everything queued (e.g. why the stream was cut).
#[derive(Debug, Default)]
pub struct LastWord {
    said: std::sync::atomic::AtomicBool,
    line: std::sync::Mutex<Option<Bytes>>,
}

impl LastWord {
    /// Leaves `line` and ends the stream: the reader gets what is queued,
    /// then `line`, then the end.
    pub fn say(&self, line: Bytes) {
        *self.line.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
        self.said.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the stream was ended this way.
    pub fn is_said(&self) -> bool {
        self.said.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A streamed response body fed through a bounded channel by a task of
/// the relay's; dropped by hyper when the client goes, which closes the
/// channel and tells the producer to stop.
pub struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    last: std::sync::Arc<LastWord>,
}

impl ChannelBody {
    /// A body of what arrives on `rx`, then `last`'s line if it was said.
    pub fn boxed_body(
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        last: std::sync::Arc<LastWord>,
    ) -> Body {
        Self { rx, last }.boxed()
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        if self.last.is_said() {
            // Once the last word is said, what was queued still goes out,
            // then it, and nothing more.
            self.rx.close();
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(data)) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            Poll::Ready(None) => {
                let last = self
                    .last
                    .line
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                Poll::Ready(last.map(|l| Ok(http_body::Frame::data(l))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
