//! Real QUIC sessions on loopback: first-contact trust by CA fingerprint,
//! mutual TLS with node certificates, and half-close through a stream.

// Certificate-making helpers outside #[test] fns panic as the failure report.
#![allow(clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnelgate_session::tls::{self, Identity, Trust};
use tunnelgate_session::{quic, Session, Transport};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::from_ca_cert_pem(&pem, key).unwrap(),
        pem,
    }
}

fn issue(ca: &Ca, cn: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Identity::from_pem(&format!("{}{}", cert.pem(), ca.pem), &key.serialize_pem()).unwrap()
}

fn ca_der(ca: &Ca) -> rustls::pki_types::CertificateDer<'static> {
    tls::certs_from_pem(&ca.pem).unwrap().remove(0)
}

async fn server(ca: &Ca) -> quinn::Endpoint {
    server_with_mtu(ca, quic::ETHERNET_MTU).await
}

async fn server_with_mtu(ca: &Ca, mtu_ceiling: u16) -> quinn::Endpoint {
    let id = issue(
        ca,
        "relay",
        vec!["localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let config = tls::server_config(id, &ca_der(ca)).unwrap();
    quic::server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        config,
        quic::IDLE_TIMEOUT,
        &[7; 32],
        mtu_ceiling,
    )
    .unwrap()
}

async fn dial(
    server: &quinn::Endpoint,
    trust: Trust,
    id: Option<Identity>,
) -> Result<Session, quinn::ConnectionError> {
    let addr = server.local_addr().unwrap();
    let client = quic::client_config(tls::client_config(trust, id).unwrap()).unwrap();
    let endpoint = quic::client_endpoint(addr).unwrap();
    let conn = endpoint
        .connect_with(client, addr, "localhost")
        .unwrap()
        .await?;
    Ok(Session::from_quic(conn))
}

#[tokio::test]
async fn first_contact_trusts_only_the_pinned_ca() {
    let ca = new_ca();
    let server = server(&ca).await;
    let accept = tokio::spawn({
        let server = server.clone();
        async move {
            let mut sessions = Vec::new();
            while let Some(incoming) = server.accept().await {
                if let Ok(conn) = incoming.await {
                    sessions.push(Session::from_quic(conn));
                }
            }
            sessions.len()
        }
    });
    let good = tls::fingerprint(&ca_der(&ca));
    let session = dial(&server, Trust::Fingerprint(good), None)
        .await
        .expect("pinned CA is trusted");
    assert_eq!(session.transport(), Transport::Quic);

    let wrong = dial(&server, Trust::Fingerprint([0u8; 32]), None)
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("fingerprint"), "{wrong}");

    let other = new_ca();
    let err = dial(&server, Trust::Ca(ca_der(&other)), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, quinn::ConnectionError::TransportError(_)),
        "{err}"
    );
    server.close(0u32.into(), b"done");
    accept.await.unwrap();
}

#[tokio::test]
async fn node_certificates_identify_the_agent_and_streams_half_close() {
    let ca = new_ca();
    let server = server(&ca).await;
    let node = issue(&ca, "web-01", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let relay_side = tokio::spawn({
        let server = server.clone();
        async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let session = Session::from_quic(conn);
            let chain = session
                .peer_certificates()
                .expect("client certificate presented");
            let node_id = tls::node_id_from_cert(&chain[0]).unwrap();
            // Echo after the peer half-closes, then keep writing: the
            // peer must still read all of it.
            let mut stream = session.open_stream().await.unwrap();
            stream.write_all(b"hi").await.unwrap();
            let mut got = Vec::new();
            stream.read_to_end(&mut got).await.unwrap();
            stream.write_all(&got).await.unwrap();
            stream.write_all(b" after half-close").await.unwrap();
            stream.shutdown().await.unwrap();
            (node_id, session)
        }
    });
    let agent = dial(&server, Trust::Ca(ca_der(&ca)), Some(node))
        .await
        .unwrap();
    let mut stream = agent.accept_stream().await.unwrap();
    let mut hi = [0u8; 2];
    stream.read_exact(&mut hi).await.unwrap();
    stream.write_all(b"request").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "request after half-close");
    let (node_id, _session) = relay_side.await.unwrap();
    assert_eq!(node_id.as_str(), "web-01");
}

/// A relay-side and an agent-side session over real QUIC on loopback.
async fn session_pair() -> (Session, Session) {
    let ca = new_ca();
    let server = server(&ca).await;
    let node = issue(&ca, "web-01", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    let accept = tokio::spawn({
        let server = server.clone();
        async move { Session::from_quic(server.accept().await.unwrap().await.unwrap()) }
    });
    let agent = dial(&server, Trust::Ca(ca_der(&ca)), Some(node))
        .await
        .unwrap();
    (accept.await.unwrap(), agent)
}

/// Bytes that show a reordered, dropped or repeated chunk.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[tokio::test]
async fn a_pipe_between_streams_moves_every_byte_in_order_and_half_closes_each_way() {
    let (relay, agent) = session_pair().await;
    let mut one = agent.open_stream().await.unwrap();
    let mut two = agent.open_stream().await.unwrap();
    // A stream is seen by the peer once something is written on it.
    one.write_all(b"1").await.unwrap();
    two.write_all(b"2").await.unwrap();
    let piped = tokio::spawn(async move {
        let mut a = relay.accept_stream().await.unwrap();
        let mut b = relay.accept_stream().await.unwrap();
        let (mut x, mut y) = ([0u8; 1], [0u8; 1]);
        a.read_exact(&mut x).await.unwrap();
        b.read_exact(&mut y).await.unwrap();
        let (a, b) = if &x == b"1" { (a, b) } else { (b, a) };
        let moved = tunnelgate_session::pipe::streams(a, b, 64 * 1024).await;
        (moved.unwrap(), relay)
    });
    let big = pattern(3 << 20, 1);
    let writer = tokio::spawn({
        let big = big.clone();
        async move {
            one.write_all(&big).await.unwrap();
            one.shutdown().await.unwrap();
            one
        }
    });
    let mut got = Vec::new();
    two.read_to_end(&mut got).await.unwrap();
    assert!(
        got == big,
        "{} bytes came through, not the 3 MiB sent in order",
        got.len()
    );
    // The other way still flows after the first direction has ended.
    let reply = pattern(100_000, 2);
    two.write_all(&reply).await.unwrap();
    two.shutdown().await.unwrap();
    let mut one = writer.await.unwrap();
    let mut back = Vec::new();
    one.read_to_end(&mut back).await.unwrap();
    assert!(back == reply, "{} bytes came back", back.len());
    let ((a_to_b, b_to_a), _relay) = piped.await.unwrap();
    assert_eq!((a_to_b, b_to_a), (big.len() as u64, reply.len() as u64));
}

#[tokio::test]
async fn a_pipe_between_a_stream_and_a_socket_moves_every_byte_both_ways() {
    let (relay, agent) = session_pair().await;
    let mut stream = agent.open_stream().await.unwrap();
    stream.write_all(b"!").await.unwrap();
    let (socket, far) = tokio::io::duplex(64 * 1024);
    let piped = tokio::spawn(async move {
        let mut s = relay.accept_stream().await.unwrap();
        let mut bang = [0u8; 1];
        s.read_exact(&mut bang).await.unwrap();
        let moved = tunnelgate_session::pipe::stream_and_io(s, socket, 16 * 1024).await;
        (moved.unwrap(), relay)
    });
    let (up, down) = (pattern(1 << 20, 3), pattern(2 << 20, 4));
    // Both ends send and read at once, so neither waits on a full buffer.
    let (mut far_r, mut far_w) = tokio::io::split(far);
    let (mut r, mut w) = stream.into_split();
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let (a, b, c, d) = tokio::join!(
        async {
            far_w.write_all(&down).await?;
            far_w.shutdown().await
        },
        far_r.read_to_end(&mut got_up),
        async {
            w.write_all(&up).await?;
            w.shutdown().await
        },
        r.read_to_end(&mut got_down),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    d.unwrap();
    assert!(got_up == up, "{} bytes went up", got_up.len());
    assert!(got_down == down, "{} bytes came down", got_down.len());
    let ((to_io, to_stream), _relay) = piped.await.unwrap();
    assert_eq!((to_io, to_stream), (up.len() as u64, down.len() as u64));
}

/// The path MTU each side of a fresh connection to a server with
/// `mtu_ceiling` has reached soon after both reached `want` (or 10 s).
async fn discovered_mtu(mtu_ceiling: u16, want: u16) -> (u16, u16) {
    let ca = new_ca();
    let server = server_with_mtu(&ca, mtu_ceiling).await;
    let accept = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.unwrap().await.unwrap() }
    });
    let addr = server.local_addr().unwrap();
    let client =
        quic::client_config(tls::client_config(Trust::Ca(ca_der(&ca)), None).unwrap()).unwrap();
    let endpoint = quic::client_endpoint(addr).unwrap();
    let agent_side = endpoint
        .connect_with(client, addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let relay_side = accept.await.unwrap();
    // Discovery probes right after the handshake; on loopback each probe
    // is answered at once, so 10 s is far more than it needs.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mtus = || {
        (
            agent_side.stats().path.current_mtu,
            relay_side.stats().path.current_mtu,
        )
    };
    while tokio::time::Instant::now() < deadline {
        let (out, back) = mtus();
        if out >= want && back >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Give a search that would go on past `want` the time to do so.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    mtus()
}

#[tokio::test]
async fn path_mtu_discovery_climbs_to_the_relays_ceiling_on_loopback() {
    let (out, back) = discovered_mtu(quic::MTU_CEILING, 6_000).await;
    assert!(
        (6_000..=quic::MTU_CEILING).contains(&out) && (6_000..=quic::MTU_CEILING).contains(&back),
        "path MTU {out} agent to relay and {back} back after 10 s on loopback; \
         discovery should have climbed towards {}",
        quic::MTU_CEILING
    );
}

#[tokio::test]
async fn the_relays_ethernet_ceiling_bounds_the_agents_discovery_too() {
    // The agent allows itself the higher ceiling: only the relay's
    // advertised payload limit can hold it at Ethernet size.
    let (out, back) = discovered_mtu(quic::ETHERNET_MTU, quic::ETHERNET_MTU).await;
    assert_eq!(
        (out, back),
        (quic::ETHERNET_MTU, quic::ETHERNET_MTU),
        "agent to relay, relay to agent"
    );
}
