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
    /// last byte. A non-2xx answer is an error.
    pub async fn call(
        &mut self,
        method: http::Method,
        path: &str,
        body: RequestBody,
    ) -> Result<(u64, Duration)> {
        let (status, n, took) = self.call_status(method, path, body).await?;
        if !status.is_success() {
            bail!("{path}: HTTP {status}");
        }
        Ok((n, took))
    }

    /// Sends a request; returns the status, body bytes received and the
    /// time to the last byte, whatever the status.
    pub async fn call_status(
        &mut self,
        method: http::Method,
        path: &str,
        body: RequestBody,
    ) -> Result<(http::StatusCode, u64, Duration)> {
        let started = Instant::now();
        let (status, n) = self
            .exchange(method, path, body, |mut body| async move {
                let mut n = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        n += data.len() as u64;
                    }
                }
                Ok(n)
            })
            .await?;
        Ok((status, n, started.elapsed()))
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
