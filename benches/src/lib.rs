//! Bench harness: an in-process relay with in-process agents in front of
//! the load tester's synthetic Docker responder, so a bench can send the
//! same request directly and through the relay in one run.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tunnelgate_proto::NodeId;

pub use tunnelgate_loadtest::client::Client;
pub use tunnelgate_loadtest::synthetic_docker;

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
        let docker = synthetic_docker::spawn(0)
            .await
            .expect("synthetic responder starts");
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
        let (api, agents, handle) = (relay.api_addr(), relay.agent_addr(), relay.handle());
        let stop = CancellationToken::new();
        tokio::spawn(relay.run(stop.clone()));
        for transport in ["quic", "tcp"] {
            let token = handle
                .create_join_token(tunnelgate_relay::state::credentials::NewCredential {
                    tenant: tunnelgate_proto::TenantId::default_tenant(),
                    ttl: Some(Duration::from_secs(60)),
                    uses: Some(1),
                    name: None,
                    node: None,
                    replace: false,
                    role: None,
                    scope: tunnelgate_relay::scope::Scope::all(),
                    labels: Default::default(),
                })
                .await
                .expect("token");
            let args = tunnelgate_agent::config::AgentArgs {
                relay: vec![agents.to_string()],
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
            let key = tunnelgate_proto::NodeKey {
                tenant: tunnelgate_proto::TenantId::default_tenant(),
                node_id: NodeId::new(node).expect("valid id"),
            };
            while handle.node(&key).is_none() {
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

/// Buffer size of [`fill`] and [`drain`]: what the relay's and the
/// agent's byte pipes move at once.
pub const STREAM_BUF: usize = 256 * 1024;

/// Writes `len` bytes into `w` from a [`STREAM_BUF`] buffer through
/// `AsyncWrite`, then half-closes it.
pub async fn fill(mut w: impl tokio::io::AsyncWrite + Unpin, len: u64) {
    use tokio::io::AsyncWriteExt;
    let chunk = vec![0x5au8; STREAM_BUF];
    let mut left = len;
    while left > 0 {
        let n = left.min(STREAM_BUF as u64) as usize;
        w.write_all(&chunk[..n]).await.expect("write");
        left -= n as u64;
    }
    w.shutdown().await.expect("shutdown");
}

/// Reads `r` to its end into a [`STREAM_BUF`] buffer through `AsyncRead`;
/// returns the bytes read.
pub async fn drain(mut r: impl tokio::io::AsyncRead + Unpin) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; STREAM_BUF];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return got;
        }
        got += n as u64;
    }
}

/// Two ends of one session over `transport` ("quic" or "tcp") on
/// loopback, authenticated as relay and agent are, for splice benches.
pub async fn session_pair(
    transport: &str,
) -> (tunnelgate_session::Session, tunnelgate_session::Session) {
    use tunnelgate_session::Session;
    if transport == "quic" {
        let (relay, agent) = quic_pair().await;
        return (Session::from_quic(relay), Session::from_quic(agent));
    }
    let (server_tls, client_tls) = tls_pair();
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
    let mux = tunnelgate_session::tcp::connect(addr, "localhost", std::sync::Arc::new(client_tls))
        .await
        .expect("tls connect");
    (accept.await.expect("accept task"), Session::from_mux(mux))
}

/// The two QUIC connections of a session as the relay and an agent make
/// them (their endpoints, transport settings and certificates), before
/// the session layer wraps them.
pub async fn quic_pair() -> (quinn::Connection, quinn::Connection) {
    let (server_tls, client_tls) = tls_pair();
    let server = tunnelgate_session::quic::server_endpoint(
        "127.0.0.1:0".parse().expect("addr"),
        server_tls,
        tunnelgate_session::quic::IDLE_TIMEOUT,
        &[7; 32],
        tunnelgate_session::quic::ETHERNET_MTU,
    )
    .expect("server endpoint");
    let addr = server.local_addr().expect("bound");
    let accept = tokio::spawn(async move {
        server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake")
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
    (accept.await.expect("accept task"), conn)
}

/// A relay's server TLS and an agent's client TLS from a bench CA.
fn tls_pair() -> (rustls::ServerConfig, rustls::ClientConfig) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use tunnelgate_session::tls::{self, Identity, Trust};

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
    (server_tls, client_tls)
}
