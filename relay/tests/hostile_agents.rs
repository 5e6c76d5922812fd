//! Agents that are not what they claim: garbage instead of TLS, a
//! certificate from another CA (over TLS/TCP and QUIC), and a properly
//! authenticated connection that then sends malformed yamux frames. Each
//! is refused with a clear log line while the relay keeps serving an
//! honest agent.

// A panic is a test failure report, in helpers as in #[test] fns.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DnType, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnelgate_session::tls::{self, Identity, Trust};

use support::Tunnel;

/// Waits (bounded) until the relay's log has a line with all `needles`.
async fn logged(tunnel: &Tunnel, needles: &[&str]) -> String {
    for _ in 0..100 {
        let log = tunnel.relay.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no log line with {needles:?} in:\n{}", tunnel.relay.log());
}

fn foreign_identity() -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "honest");
    let cert = params.self_signed(&key).unwrap();
    Identity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

fn relay_ca(tunnel: &Tunnel) -> rustls::pki_types::CertificateDer<'static> {
    let pem = std::fs::read_to_string(tunnel.dir.path().join("relay/ca.pem")).unwrap();
    tls::certs_from_pem(&pem).unwrap().remove(0)
}

fn honest_still_served(tunnel: &Tunnel) {
    let out = tunnel.docker().ok(&["ps"]);
    assert!(
        out.is_ok(),
        "the honest agent's node stopped working: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agent_connections_are_refused_and_logged() {
    let tunnel = Tunnel::start("honest").unwrap();
    let addr = tunnel.relay.agent;
    let counted = |result: &str| {
        tunnel.relay.metric(&format!(
            "tunnelgate_relay_agent_handshakes_total{{result=\"{result}\"}}"
        ))
    };

    // 0. A connection closed before any TLS, as a load balancer's TCP
    //    health check does: an abort, not a TLS failure to alert on.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    for _ in 0..100 {
        if counted("aborted") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!((counted("aborted"), counted("tls_failed")), (1, 0));

    // 1. Not TLS at all on the TCP side of the agent port.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    logged(&tunnel, &["agent TLS handshake failed", "tls_failed"]).await;
    assert_eq!(counted("tls_failed"), 1);
    honest_still_served(&tunnel);

    // 2. A client certificate from another CA, over TLS/TCP.
    let config =
        tls::client_config(Trust::Ca(relay_ca(&tunnel)), Some(foreign_identity())).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connected = tokio_rustls::TlsConnector::from(Arc::new(config.clone()))
        .connect(name, tcp)
        .await;
    if let Ok(mut s) = connected {
        // TLS 1.3 reports a refused client certificate on the first read.
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    }
    let line = logged(&tunnel, &["agent TLS handshake failed", "certificate"]).await;
    assert!(
        line.contains("UnknownIssuer") || line.contains("issuer"),
        "{line}"
    );
    honest_still_served(&tunnel);

    // 3. The same over QUIC.
    let quic = tunnelgate_session::quic::client_config(config).unwrap();
    let endpoint = tunnelgate_session::quic::client_endpoint(addr).unwrap();
    let attempt = endpoint
        .connect_with(quic, addr, "localhost")
        .unwrap()
        .await;
    if let Ok(conn) = attempt {
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
    }
    logged(&tunnel, &["agent QUIC handshake failed", "tls_failed"]).await;
    assert_eq!(counted("tls_failed"), 3);
    assert_eq!(counted("aborted"), 1);
    honest_still_served(&tunnel);

    // 4. Authenticated with the honest node's own certificate, then
    //    garbage where yamux frames belong.
    let agent_dir = tunnel.dir.path().join("agent");
    let read = |f: &str| std::fs::read_to_string(agent_dir.join(f)).unwrap();
    let identity = Identity::from_pem(&read("node.pem"), &read("node.pem")).unwrap();
    let config = tls::client_config(Trust::Ca(relay_ca(&tunnel)), Some(identity)).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    // Version 9 and an unknown frame type: no yamux peer sends this.
    s.write_all(&[9, 0xff, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    s.flush().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    let line = logged(
        &tunnel,
        &["agent session failed before its control stream opened"],
    )
    .await;
    assert!(line.contains("yamux"), "{line}");
    honest_still_served(&tunnel);
}
