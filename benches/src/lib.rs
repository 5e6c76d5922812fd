//! Bench harness: an in-process relay with in-process agents in front of a
//! synthetic Docker responder, and a minimal HTTP client, so a bench can
//! send the same request directly and through the relay in one run.
//!
//! The responder is synthetic on purpose and named so: it answers only
//! what the benches ask (`/_ping`, `/bulk?bytes=N`) and stands in for
//! dockerd so the relay's cost is measured, not the daemon's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::NodeId;

/// Bytes per body chunk the synthetic responder sends.
const CHUNK: usize = 256 * 1024;

/// A body of `left` bytes made of one shared chunk, so the responder costs
/// next to nothing per byte.
struct Bulk {
    left: u64,
    chunk: Bytes,
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

/// Starts the synthetic Docker responder on loopback; returns its address.
pub async fn spawn_synthetic_docker() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let chunk = Bytes::from(vec![0x5a; CHUNK]);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let chunk = chunk.clone();
                    async move {
                        let bytes = req
                            .uri()
                            .query()
                            .and_then(|q| q.strip_prefix("bytes="))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(2);
                        let body = if req.uri().path() == "/bulk" {
                            Bulk { left: bytes, chunk }
                        } else {
                            Bulk {
                                left: 2,
                                chunk: Bytes::from_static(b"OK"),
                            }
                        };
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("http handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    /// GETs `path` and returns how many body bytes arrived.
    pub async fn get(&mut self, path: &str) -> u64 {
        self.sender.ready().await.expect("connection ready");
        let req = hyper::Request::get(path)
            .header("host", "bench")
            .body(Empty::new())
            .expect("valid request");
        let resp = self.sender.send_request(req).await.expect("response");
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("body frame").into_data() {
                n += data.len() as u64;
            }
        }
        n
    }
}

/// A relay with one agent per transport, all in this process, in front of
/// the synthetic Docker responder.
pub struct Fixture {
    /// The synthetic responder, for direct requests.
    pub docker: SocketAddr,
    /// The relay's Docker API listener.
    pub relay: SocketAddr,
    stop: CancellationToken,
    _state: tempfile::TempDir,
}

impl Fixture {
    /// Starts everything; returns once both nodes (`bench-quic`,
    /// `bench-tcp`) are connected.
    pub async fn start() -> Self {
        let docker = spawn_synthetic_docker().await;
        let state = tempfile::tempdir().expect("tempdir");
        let config = tunnelgate_relay::Config::resolve(tunnelgate_relay::ServeArgs {
            state_dir: Some(state.path().join("relay")),
            api_listen: Some("127.0.0.1:0".parse().expect("addr")),
            agent_listen: Some("127.0.0.1:0".parse().expect("addr")),
            metrics_listen: Some("127.0.0.1:0".parse().expect("addr")),
            ..Default::default()
        })
        .expect("relay config");
        let relay = tunnelgate_relay::Relay::bind(config)
            .await
            .expect("relay binds");
        let (api, agents, shared) = (relay.api_addr(), relay.agent_addr(), relay.shared());
        let stop = CancellationToken::new();
        tokio::spawn(relay.run(stop.clone()));
        for transport in ["quic", "tcp"] {
            let (token, _) = shared
                .authority
                .create_token(Duration::from_secs(60))
                .expect("token");
            let args = tunnelgate_agent::config::AgentArgs {
                relay: Some(agents.to_string()),
                token: Some(token),
                node_id: Some(format!("bench-{transport}")),
                docker: Some(format!("tcp://{docker}")),
                state_dir: Some(state.path().join(transport)),
                transport: Some(if transport == "quic" {
                    tunnelgate_agent::config::TransportChoice::Quic
                } else {
                    tunnelgate_agent::config::TransportChoice::Tcp
                }),
                ..Default::default()
            };
            let config = tunnelgate_agent::AgentConfig::resolve(args).expect("agent config");
            tokio::spawn(tunnelgate_agent::run(config, stop.clone()));
        }
        for node in ["bench-quic", "bench-tcp"] {
            let id = NodeId::new(node).expect("valid id");
            while shared.sessions.get(&id).is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Self {
            docker,
            relay: api,
            stop,
            _state: state,
        }
    }

    /// Stops relay and agents.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Two ends of one session over `transport` ("quic" or "tcp") on
/// loopback, authenticated as relay and agent are, for splice benches.
pub async fn session_pair(
    transport: &str,
) -> (tunnelgate_session::Session, tunnelgate_session::Session) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use tunnelgate_session::tls::{self, Identity, Trust};
    use tunnelgate_session::Session;

    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let issue = |cn: &str, sans: Vec<String>, usage| {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &issuer).expect("cert");
        Identity::from_pem(&format!("{}{ca_pem}", cert.pem()), &key.serialize_pem())
            .expect("identity")
    };
    let ca_der = tls::certs_from_pem(&ca_pem).expect("ca pem").remove(0);
    let server_tls = tls::server_config(
        issue(
            "relay",
            vec!["localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        &ca_der,
    )
    .expect("server tls");
    let client_tls = tls::client_config(
        Trust::Ca(ca_der.clone()),
        Some(issue(
            "bench-node",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        )),
    )
    .expect("client tls");

    if transport == "quic" {
        let server = tunnelgate_session::quic::server_endpoint(
            "127.0.0.1:0".parse().expect("addr"),
            server_tls,
        )
        .expect("server endpoint");
        let addr = server.local_addr().expect("bound");
        let accept = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            Session::from_quic(conn)
        });
        let client = tunnelgate_session::quic::client_endpoint(addr).expect("client endpoint");
        let conn = client
            .connect_with(
                tunnelgate_session::quic::client_config(client_tls).expect("quic config"),
                addr,
                "localhost",
            )
            .expect("connect")
            .await
            .expect("handshake");
        (accept.await.expect("accept task"), Session::from_quic(conn))
    } else {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_tls));
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            Session::from_mux(
                tunnelgate_session::tcp::accept(tcp, &acceptor)
                    .await
                    .expect("tls accept"),
            )
        });
        let mux =
            tunnelgate_session::tcp::connect(addr, "localhost", std::sync::Arc::new(client_tls))
                .await
                .expect("tls connect");
        (accept.await.expect("accept task"), Session::from_mux(mux))
    }
}
