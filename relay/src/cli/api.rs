//! The admin commands that ask a running relay over its API (`nodes ls`,
//! `nodes inspect`), with the credentials the docker CLI would use: an
//! API key, a client certificate directory (`ca.pem`, `cert.pem`,
//! `key.pem`, as `DOCKER_CERT_PATH` holds), or none on loopback.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Where the relay's API is and how to authenticate to it.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The relay's API: `http://HOST:PORT` on loopback, `https://HOST:PORT`
    /// elsewhere.
    #[arg(long, env = "TUNNELGATE_URL", default_value = "http://127.0.0.1:7375")]
    url: String,
    /// An API key (`api-key create`), sent as a bearer token.
    #[arg(
        long,
        env = "TUNNELGATE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// A directory with `ca.pem` (the installation CA) and, for a client
    /// certificate, `cert.pem` and `key.pem` (`client-cert create --out`).
    #[arg(long, env = "DOCKER_CERT_PATH", value_name = "DIR")]
    cert_path: Option<PathBuf>,
}

impl ApiArgs {
    /// Whether the relay speaks TLS, its `HOST:PORT`, and its host.
    fn endpoint(&self) -> anyhow::Result<(bool, &str, String)> {
        let (tls, rest) = match (
            self.url.strip_prefix("https://"),
            self.url.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => bail!("--url {} must start with http:// or https://", self.url),
        };
        let authority = rest.trim_end_matches('/');
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok((tls, authority, host))
    }

    /// The relay's API, as `--url` names it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The relay's `HOST:PORT`, for a request's `Host`.
    pub fn authority(&self) -> anyhow::Result<String> {
        Ok(self.endpoint()?.1.to_owned())
    }

    /// Adds the API key, if one was given, to a request's headers.
    pub fn authorize(&self, headers: &mut http::HeaderMap) -> anyhow::Result<()> {
        if let Some(key) = &self.api_key {
            headers.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {key}"))?,
            );
        }
        Ok(())
    }

    /// A new HTTP/1.1 connection to the relay (over TLS with the client
    /// certificate, for `https://`), driven on a task of its own, upgrades
    /// allowed.
    pub async fn dial<B>(&self) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (tls, authority, host) = self.endpoint()?;
        let tcp = TcpStream::connect(authority).await.with_context(|| {
            format!(
                "cannot reach the relay at {}; is it running, and is that its API address?",
                self.url
            )
        })?;
        let _ = tcp.set_nodelay(true);
        if tls {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(self.tls_config()?));
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = connector.connect(name, tcp).await.context(
                "the TLS handshake with the relay failed; is --cert-path the installation's CA?",
            )?;
            handshake(TokioIo::new(stream)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }

    /// `GET path` on the relay; the status and the body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let mut sender = self.dial::<Empty<Bytes>>().await?;
        let mut req = http::Request::get(path)
            .header(http::header::HOST, self.authority()?)
            .body(Empty::<Bytes>::new())?;
        self.authorize(req.headers_mut())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    fn tls_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let Some(dir) = &self.cert_path else {
            bail!("an https:// relay needs --cert-path DIR with its ca.pem (client-cert create --out DIR writes one)");
        };
        let ca = std::fs::read_to_string(dir.join("ca.pem"))
            .with_context(|| format!("cannot read {}", dir.join("ca.pem").display()))?;
        let ca = tunnelgate_session::tls::certs_from_pem(&ca)?
            .into_iter()
            .next()
            .context("ca.pem holds no certificate")?;
        let identity = match dir.join("cert.pem").exists() {
            true => Some(tunnelgate_session::tls::Identity::from_pem(
                &std::fs::read_to_string(dir.join("cert.pem"))?,
                &std::fs::read_to_string(dir.join("key.pem"))?,
            )?),
            false => None,
        };
        let mut config = tunnelgate_session::tls::client_config(
            tunnelgate_session::tls::Trust::Ca(ca),
            identity,
        )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// `GET path` as JSON; a relay error becomes its message.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path).await?;
        let value: Value = serde_json::from_slice(&body)
            .with_context(|| format!("the relay answered {status} with something not JSON"))?;
        if !(200..300).contains(&status) {
            let message = value["message"].as_str().unwrap_or("no message");
            bail!("the relay answered {status}: {message}");
        }
        Ok(value)
    }
}

async fn handshake<S, B>(
    io: TokioIo<S>,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "relay connection ended");
        }
    });
    Ok(sender)
}

/// How `nodes ls` prints.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum Output {
    /// Aligned columns.
    #[default]
    Table,
    /// The relay's JSON, as is.
    Json,
}

/// Prints every node of the caller's tenant.
pub async fn ls(api: &ApiArgs, output: Output) -> anyhow::Result<()> {
    let nodes = api.get_json("/v1/nodes?all=1").await?;
    let nodes = nodes.as_array().context("the node list is not a list")?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(nodes)?),
        Output::Table => print!("{}", table(nodes)),
    }
    Ok(())
}

/// The node list as aligned columns.
fn table(nodes: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let header = [
        "NODE",
        "STATUS",
        "HOST",
        "TRANSPORT",
        "ROUTE",
        "RELAY",
        "RTT",
        "DOCKER",
        "AGENT",
        "SINCE",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for n in nodes {
        let rtt = n["rtt_ms"]
            .as_f64()
            .map_or("-".to_owned(), |ms| format!("{ms:.1}ms"));
        rows.push(vec![
            text(&n["node_id"]),
            text(&n["status"]),
            text(&n["hostname"]),
            text(&n["transport"]),
            text(&n["route"]),
            text(&n["relay_id"]),
            rtt,
            text(&n["docker_version"]),
            text(&n["agent_version"]),
            text(&n["connected_since"]),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Prints one node: everything this relay knows of it.
pub async fn inspect(api: &ApiArgs, node: &str) -> anyhow::Result<()> {
    let nodes = api.get_json("/v1/nodes?all=1").await?;
    let Some(listed) = nodes
        .as_array()
        .and_then(|all| all.iter().find(|n| n["node_id"] == node))
    else {
        bail!("no node {node:?} in this tenant; `tunnelgate-relay nodes ls` lists them");
    };
    println!("{}", serde_json::to_string_pretty(listed)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_columns_and_shows_missing_facts_as_a_dash() {
        let nodes = vec![
            serde_json::json!({"node_id": "web-1", "status": "connected", "rtt_ms": 1.25, "hostname": "h"}),
            serde_json::json!({"node_id": "db", "status": "offline"}),
        ];
        let t = table(&nodes);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("NODE   STATUS"), "{t}");
        assert!(lines[1].starts_with("web-1  connected  h"), "{t}");
        assert!(
            lines[1].contains("1.2ms") || lines[1].contains("1.3ms"),
            "{t}"
        );
        assert!(lines[2].starts_with("db     offline    -"), "{t}");
    }
}
