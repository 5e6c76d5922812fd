//! A minimal keep-alive HTTP/1.1 client that times each call.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// Any request body: empty, or streamed (uploads).
pub type RequestBody = BoxBody<Bytes, std::convert::Infallible>;

/// Bytes of an answer's body kept to quote it: a relay error message fits.
const REPLY_HEAD: usize = 300;

/// One answer: status, body size, time to its last byte, and the start of
/// its body (the relay's message when it refused the call).
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// Body bytes received.
    pub bytes: u64,
    /// Time from sending to the last byte.
    pub took: Duration,
    /// The body's first bytes, as text.
    pub head: String,
}

impl Reply {
    /// "HTTP 502 Bad Gateway: <the relay's message>", for a report.
    pub fn describe(&self) -> String {
        format!("HTTP {}: {}", self.status, self.head)
    }
}

/// One client connection.
pub struct Client {
    addr: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<RequestBody>>,
}

impl Client {
    /// A client for `addr`; connects on first use and after failures.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    async fn sender(
        &mut self,
    ) -> Result<&mut hyper::client::conn::http1::SendRequest<RequestBody>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let tcp = tokio::net::TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("just set");
        sender.ready().await?;
        Ok(sender)
    }

    /// Sends a request; returns body bytes received and the time to the
    /// last byte. A non-2xx answer is an error quoting the relay's message.
    pub async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: RequestBody,
    ) -> Result<(u64, Duration)> {
        let reply = self.call_status(method, path, body).await?;
        if !reply.status.is_success() {
            bail!("{path}: {}", reply.describe());
        }
        Ok((reply.bytes, reply.took))
    }

    /// Sends a request; returns the answer whatever its status.
    pub async fn call_status(
        &mut self,
        method: http::Method,
        path: &str,
        body: RequestBody,
    ) -> Result<Reply> {
        let started = Instant::now();
        let (status, (bytes, head)) = self
            .exchange(method, path, body, |mut body| async move {
                let mut n = 0u64;
                let mut head = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        n += data.len() as u64;
                        let room = REPLY_HEAD.saturating_sub(head.len());
                        head.extend_from_slice(&data[..room.min(data.len())]);
                    }
                }
                Ok((n, head))
            })
            .await?;
        Ok(Reply {
            status,
            bytes,
            took: started.elapsed(),
            head: String::from_utf8_lossy(&head).trim().to_owned(),
        })
    }

    /// Sends a request and hands the response body to `read`; forgets the
    /// connection when anything fails, so the next call opens a new one.
    async fn exchange<T, F, Fut>(
        &mut self,
        method: http::Method,
        path: &str,
        body: RequestBody,
        read: F,
    ) -> Result<(http::StatusCode, T)>
    where
        F: FnOnce(hyper::body::Incoming) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let result = async {
            let sender = self.sender().await?;
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "loadtest")
                .body(body)?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            Ok((status, read(resp.into_body()).await?))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<(u64, Duration)> {
        self.call(http::Method::GET, path, Empty::new().boxed())
            .await
    }
}

/// `GET path` from `addr` on a connection of its own; the body as text.
pub async fn fetch_text(addr: SocketAddr, path: &str) -> Result<String> {
    let (status, body) = Client::new(addr)
        .exchange(
            http::Method::GET,
            path,
            Empty::new().boxed(),
            |body| async { Ok(body.collect().await?.to_bytes()) },
        )
        .await?;
    if !status.is_success() {
        bail!("{path}: HTTP {status}");
    }
    Ok(String::from_utf8(body.to_vec())?)
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest.
    pub max_us: f64,
}

impl Percentiles {
    /// From unsorted samples; `None` when there are none.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_nanos() as f64 / 1000.0
        };
        Some(Self {
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_samples() {
        let mut s: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let p = Percentiles::of(&mut s).unwrap();
        assert_eq!(
            (p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert!(Percentiles::of(&mut []).is_none());
    }
}
