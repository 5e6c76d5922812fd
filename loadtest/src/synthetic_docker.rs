//! A synthetic Docker responder: NOT dockerd. It answers just what load
//! tests and benches ask — `/_ping`, `/version` and `/info` (so agents see
//! a "daemon"), `GET /bulk?bytes=N` and `POST /upload` — at next to no
//! cost per byte, so measurements show the relay's cost rather than the
//! daemon's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// Bytes per body chunk.
const CHUNK: usize = 256 * 1024;

const VERSION_JSON: &str =
    r#"{"Version":"synthetic","ApiVersion":"1.41","Os":"linux","Arch":"amd64"}"#;
/// The part of `/info` an agent reads: the daemon's ID.
const INFO_JSON: &str = r#"{"ID":"synthetic-docker-responder"}"#;

/// A body of `left` bytes made of one shared chunk.
pub struct Bulk {
    left: u64,
    chunk: Bytes,
}

impl Bulk {
    /// A body of `bytes` bytes.
    pub fn new(bytes: u64) -> Self {
        Self {
            left: bytes,
            chunk: Bytes::from(vec![0x5a; CHUNK]),
        }
    }
}

impl Body for Bulk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

fn small(text: &'static str) -> Bulk {
    Bulk {
        left: text.len() as u64,
        chunk: Bytes::from_static(text.as_bytes()),
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    chunk: Bytes,
) -> Result<hyper::Response<Bulk>, Infallible> {
    let path = req.uri().path().to_owned();
    let body = if path.ends_with("/version") {
        small(VERSION_JSON)
    } else if path.ends_with("/info") {
        small(INFO_JSON)
    } else if path.ends_with("/bulk") {
        let bytes = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Bulk { left: bytes, chunk }
    } else if path.ends_with("/upload") {
        // Count what arrives, answer with nothing.
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        small("")
    } else {
        small("OK")
    };
    Ok(hyper::Response::new(body))
}

/// Starts the responder on loopback; returns its address.
pub async fn spawn(port: u16) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, chunk.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
