//! The hostile-input suite: malformed and abusive bytes at every door of
//! the relay, while a well-behaved client keeps calling the real dockerd
//! through it. Every case must get a clear error, no case may reach a node
//! other than the one it names, and the well-behaved client must see no
//! failed call. The suite counts and prints what it tried.
//!
//! The relay runs in-process (the real relay code) so the suite can also
//! play a compromised relay towards a real agent process: stream headers
//! asking for another kind of target must be refused by the agent.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tunnelgate_proto::frame::DEFAULT_MAX_FRAME;
use tunnelgate_proto::message::{ControlMessage, StreamErrorCode, StreamReply};
use tunnelgate_proto::{NodeId, NodeKey, TenantId};
use tunnelgate_relay::state::credentials::NewCredential;
use tunnelgate_relay::{Config, Relay, RelayHandle, ServeArgs};
use tunnelgate_session::tls::{self, Identity, Trust};
use tunnelgate_session::{Session, Stream};

use support::{docker_endpoint, AgentCmd, Proc};

/// Marks every hostile request; the canary daemon of node `b` must never
/// see it.
const MARK: &str = "hostile-canary";

/// A "daemon" for node `b` that only records request lines and never
/// answers: if a hostile request ever reaches node `b`, its line is here.
fn canary() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let record = record.clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).unwrap_or(0);
                let text = String::from_utf8_lossy(&buf[..n]);
                record
                    .lock()
                    .unwrap()
                    .push(text.lines().next().unwrap_or("").to_owned());
            });
        }
    });
    (addr, seen)
}

/// Sends raw bytes to the front and returns the status it answered, or
/// `None` if it closed without an answer.
fn raw_http(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok());
    (status, text)
}

fn node_key(node: &str) -> NodeKey {
    NodeKey {
        tenant: TenantId::default_tenant(),
        node_id: NodeId::new(node).unwrap(),
    }
}

struct Fixture {
    relay: RelayHandle,
    api: SocketAddr,
    agent_addr: SocketAddr,
    stop: CancellationToken,
    _agents: Vec<Proc>,
    dir: tempfile::TempDir,
    canary_seen: Arc<Mutex<Vec<String>>>,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::resolve(ServeArgs {
        state_dir: Some(dir.path().join("relay")),
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        agent_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        heartbeat_interval: Some(Duration::from_secs(1)),
        limits: tunnelgate_relay::config::LimitArgs {
            header_read_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let relay = Relay::bind(config).await.unwrap();
    let (api, agent_addr, handle) = (relay.api_addr(), relay.agent_addr(), relay.handle());
    let stop = CancellationToken::new();
    tokio::spawn(relay.run(stop.clone()));

    let (canary_addr, canary_seen) = canary();
    let mut agents = Vec::new();
    for (node, docker) in [
        ("a", docker_endpoint()),
        ("b", format!("tcp://{canary_addr}")),
    ] {
        let token = handle
            .create_join_token(NewCredential {
                tenant: TenantId::default_tenant(),
                ttl: Some(Duration::from_secs(600)),
                uses: Some(1),
                name: None,
                node: None,
                replace: false,
                role: None,
                scope: tunnelgate_relay::scope::Scope::all(),
                labels: Default::default(),
            })
            .await
            .unwrap();
        let state = dir.path().join(node);
        agents.push(
            AgentCmd::to(agent_addr, node, &docker, &state, Some(&token))
                .spawn()
                .unwrap(),
        );
    }
    for node in ["a", "b"] {
        let key = node_key(node);
        let connected = async {
            while handle.node(&key).is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), connected)
            .await
            .unwrap_or_else(|_| panic!("the fixture's agent for node {node} did not connect within 30 s; see its log above"));
    }
    Fixture {
        relay: handle,
        api,
        agent_addr,
        stop,
        _agents: agents,
        dir,
        canary_seen,
    }
}

/// Calls node `a`'s real daemon until told to stop; counts the outcomes.
fn well_behaved(
    api: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let mut ok = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match support::http_get(api, "/nodes/a/v1.41/containers/json") {
                Ok((200, body)) if body.starts_with('[') => ok += 1,
                other => failures.push(format!("{other:?}")),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (ok, failures)
    })
}

fn node_cert(f: &Fixture) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read_to_string(f.dir.path().join("a/node.pem")).unwrap();
    let identity = Identity::from_pem(&pem, &pem).unwrap();
    let ca = f.relay.ca_der();
    Arc::new(tls::client_config(Trust::Ca(ca), Some(identity)).unwrap())
}

/// An authenticated session as node `a`'s agent would open, over `transport`.
async fn raw_session(f: &Fixture, transport: &str) -> Session {
    let config = node_cert(f);
    if transport == "tcp" {
        let mux = tunnelgate_session::tcp::connect(f.agent_addr, "localhost", config)
            .await
            .unwrap();
        Session::from_mux(mux)
    } else {
        let quic = tunnelgate_session::quic::client_config((*config).clone()).unwrap();
        let endpoint = tunnelgate_session::quic::client_endpoint(f.agent_addr).unwrap();
        let conn = endpoint
            .connect_with(quic, f.agent_addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        Session::from_quic(conn)
    }
}

/// Writes `bytes` as the control stream, closes the writing side when
/// `close`, and returns what the relay answered before ending the stream.
async fn control_garbage(f: &Fixture, transport: &str, bytes: &[u8], close: bool) -> String {
    let session = raw_session(f, transport).await;
    let mut control: Stream = session.open_stream().await.unwrap();
    control.write_all(bytes).await.unwrap();
    if close {
        control.shutdown().await.unwrap();
    }
    let read = async {
        let mut out = Vec::new();
        let _ = control.read_to_end(&mut out).await;
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("the relay neither answered nor ended the stream");
    session.close("done");
    let mut buf = bytes::BytesMut::from(&out[..]);
    match tunnelgate_proto::frame::decode(&mut buf, DEFAULT_MAX_FRAME) {
        Ok(Some(payload)) => match ControlMessage::decode(&payload) {
            Ok(ControlMessage::Refused(r)) => r.message,
            other => format!("unexpected answer {other:?}"),
        },
        other => format!("no refusal frame ({other:?}, {} bytes)", out.len()),
    }
}

use tunnelgate_proto::message::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_errors_and_never_disturbs_honest_calls() {
    let f = fixture().await;
    let stop = Arc::new(AtomicBool::new(false));
    let client = well_behaved(f.api, stop.clone());
    // A case counts when its checks have held, not when it starts: each
    // `case` is closed by `held` after its assertions.
    let (started, passed) = (AtomicU64::new(0), AtomicU64::new(0));
    let case = |name: &str| {
        started.fetch_add(1, Ordering::Relaxed);
        println!("case {name}");
    };
    let held = || {
        passed.fetch_add(1, Ordering::Relaxed);
    };

    // --- The HTTP front.
    let api = f.api;
    let front: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("binary garbage", b"\x00\x01\x02\xff hello\r\n\r\n".to_vec(), &[400]),
        ("bad version", b"GET /v1/nodes HTTP/9.9\r\n\r\n".to_vec(), &[400, 505]),
        ("request line without a path", b"GET\r\n\r\n".to_vec(), &[400]),
        (
            "header without colon",
            b"GET /v1/nodes HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "oversized header",
            format!("GET /v1/nodes HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000)).into_bytes(),
            &[431],
        ),
        (
            "oversized request line",
            format!("GET /nodes/a/{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000)).into_bytes(),
            &[414, 431, 400],
        ),
        (
            "too many headers",
            format!(
                "GET /v1/nodes HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..150).map(|i| format!("X-H{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            &[431],
        ),
        (
            "conflicting content lengths",
            format!("POST /nodes/a/{MARK} HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc").into_bytes(),
            &[400],
        ),
    ];
    for (name, bytes, expected) in &front {
        case(name);
        let (status, text) = raw_http(api, bytes);
        assert!(
            status.is_some_and(|s| expected.contains(&s)),
            "{name}: expected one of {expected:?}, got {status:?}: {}",
            text.chars().take(300).collect::<String>()
        );
        held();
    }

    // Path tricks from node a towards node b, plain and encoded.
    for path in [
        format!("/nodes/a/../b/{MARK}"),
        format!("/nodes/a/%2e%2e/b/{MARK}"),
        format!("/nodes/a/%2E%2E%2Fb/{MARK}"),
        format!("/nodes/a%2fb/{MARK}"),
        format!("/nodes/a%2Fb/{MARK}"),
        format!("/nodes//b/{MARK}"),
        format!("/nodes/./b/{MARK}"),
        format!("/nodes/a/..%2fb/{MARK}"),
        format!("/nodes/a\\..\\b/{MARK}"),
        format!("/nodes/b%00/{MARK}"),
        format!("//nodes/b/{MARK}"),
        format!("/nodes/a/./../../nodes/b/{MARK}"),
    ] {
        case(&path);
        let (status, text) = raw_http(
            api,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let status = status.unwrap_or(0);
        assert!(
            [400, 404].contains(&status),
            "{path}: {status} {}",
            text.chars().take(300).collect::<String>()
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            body.contains("\"message\""),
            "{path}: no JSON error: {text}"
        );
        held();
    }

    // A slow client: half a request head, then nothing. Cut at the
    // header read timeout (1 s here), counted in the metrics.
    case("slow header");
    let mut slow = TcpStream::connect(api).unwrap();
    slow.write_all(b"GET /v1/nodes HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || text.starts_with("HTTP/1.1 408"),
        "slow header: {text}"
    );
    let metrics = f.relay.metrics_text();
    for limit in ["header_read_timeout", "header_size", "header_count"] {
        assert!(
            metrics.contains(&format!(
                "tunnelgate_relay_limit_hits_total{{limit=\"{limit}\"}}"
            )),
            "no {limit} hit counted:\n{metrics}"
        );
    }
    held();

    // A silent client: connects and sends nothing. Cut at the same
    // timeout, not held open.
    case("silent client");
    let mut silent = TcpStream::connect(api).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = silent.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "a client that sends nothing is still connected: {closed:?}"
    );
    held();

    // --- The agent port, over both transports, with a valid node
    //     certificate: garbage, truncated and oversized control frames.
    for transport in ["tcp", "quic"] {
        let mut oversized = vec![0xff, 0xff, 0xff, 0xff];
        oversized.extend_from_slice(b"{}");
        let mut garbage_json = 25u32.to_be_bytes().to_vec();
        garbage_json.extend_from_slice(b"{\"type\":\"hello\",\"versi");
        garbage_json.extend_from_slice(b"on\":");
        let mut truncated = 1000u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(b"{\"type\":\"hel");
        for (name, bytes, close, expect) in [
            ("oversized frame", oversized, false, "exceeds"),
            (
                "malformed message",
                garbage_json,
                false,
                "protocol violation",
            ),
            ("truncated frame", truncated, true, "inside a frame"),
        ] {
            case(&format!("{transport}: {name}"));
            let answer = control_garbage(&f, transport, &bytes, close).await;
            assert!(
                answer.contains(expect),
                "{transport} {name}: relay answered {answer:?}"
            );
            held();
        }
    }
    let metrics = f.relay.metrics_text();
    assert!(
        metrics.contains("tunnelgate_relay_limit_hits_total{limit=\"frame_size\"} 2"),
        "oversized frames not counted:\n{metrics}"
    );
    for transport in ["tcp", "quic"] {
        // Not even a session: random bytes on the agent port.
        case(&format!("{transport}: random bytes instead of a handshake"));
        if transport == "tcp" {
            let mut s = tokio::net::TcpStream::connect(f.agent_addr).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
                .await
                .unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the relay kept a garbage TLS connection open")
                .unwrap_or(0);
            // A TLS alert (0x15) or a plain close: either way, refused.
            assert!(
                n == 0 || buf[0] == 0x15,
                "unexpected answer {:?}",
                &buf[..n]
            );
        } else {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            for i in 0..50u8 {
                sock.send_to(&[i; 1200], f.agent_addr).await.unwrap();
            }
            // Whatever comes back must not start a handshake: a version
            // negotiation (long header, version 0) or a stateless reset
            // (short header) only, never an Initial or Handshake packet.
            let mut answers = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
            {
                answers.push(buf[..n].to_vec());
            }
            for a in &answers {
                let long = a[0] & 0x80 != 0;
                let version_negotiation = long && a.len() >= 5 && a[1..5] == [0, 0, 0, 0];
                assert!(
                    !long || version_negotiation,
                    "the relay answered garbage with a handshake packet: {:02x?}",
                    &a[..a.len().min(16)]
                );
            }
            // And the endpoint still takes an honest QUIC handshake.
            let honest = tokio::time::timeout(Duration::from_secs(10), raw_session(&f, "quic"))
                .await
                .expect("after UDP garbage the relay no longer completes a QUIC handshake");
            honest.close("done");
            println!("  {} datagrams came back, none a handshake", answers.len());
        }
        held();
    }

    // --- Playing a compromised relay towards the real agent of node a:
    //     stream headers asking for another kind of target, another node,
    //     another protocol major, or not a header at all.
    let session_a = f
        .relay
        .session(&node_key("a"))
        .expect("node a is connected");
    let headers: [(&str, &str, StreamErrorCode); 3] = [
        (
            "tcp forward to another target",
            r#"{"type":"stream_header","version":{"major":1,"minor":0},"kind":"tcp_forward","target":"127.0.0.1:22","request_id":1,"node_id":"a"}"#,
            StreamErrorCode::UnsupportedKind,
        ),
        (
            "header for another node",
            r#"{"type":"stream_header","version":{"major":1,"minor":0},"kind":"docker_http","request_id":2,"node_id":"b"}"#,
            StreamErrorCode::WrongNode,
        ),
        (
            "incompatible major",
            r#"{"type":"stream_header","version":{"major":9,"minor":0},"kind":"docker_http","request_id":3,"node_id":"a"}"#,
            StreamErrorCode::IncompatibleVersion,
        ),
    ];
    for (name, json, code) in headers {
        case(&format!("relay to agent: {name}"));
        let mut stream = session_a.open_stream().await.unwrap();
        let mut frame = bytes::BytesMut::new();
        tunnelgate_proto::frame::encode(json.as_bytes(), DEFAULT_MAX_FRAME, &mut frame).unwrap();
        stream.write_all(&frame).await.unwrap();
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_message::<StreamReply>(DEFAULT_MAX_FRAME),
        )
        .await
        .expect("the agent did not answer")
        .unwrap();
        match reply {
            StreamReply::Error { code: got, message } => {
                assert_eq!(got, code, "{name}: {message}");
                assert!(!message.is_empty());
            }
            StreamReply::Accept => panic!("{name}: the agent accepted"),
        }
        held();
    }
    case("relay to agent: garbage instead of a header");
    let mut stream = session_a.open_stream().await.unwrap();
    stream
        .write_all(&[0, 0, 0, 4, b'n', b'o', b'p', b'e'])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the agent kept a garbage stream open");
    let mut answer = bytes::BytesMut::from(&rest[..]);
    let accepted = matches!(
        tunnelgate_proto::frame::decode(&mut answer, DEFAULT_MAX_FRAME)
            .ok()
            .flatten()
            .map(|p| StreamReply::decode(&p)),
        Some(Ok(StreamReply::Accept))
    );
    assert!(
        !accepted,
        "the agent accepted a stream whose header was garbage"
    );
    held();

    // Honest traffic went on throughout, and nothing reached node b.
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = client.join().unwrap();
    let seen = f.canary_seen.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|l| l.contains(MARK)),
        "a hostile request reached node b: {seen:?}"
    );
    assert!(
        failures.is_empty(),
        "the well-behaved client saw failures: {failures:?}"
    );
    assert!(ok > 10, "the well-behaved client made only {ok} calls");
    let (n, ok_cases) = (
        started.load(Ordering::Relaxed),
        passed.load(Ordering::Relaxed),
    );
    println!("hostile-input suite: {ok_cases} of {n} cases held, each answered with a clear error; well-behaved client: {ok} calls, 0 failed");
    assert_eq!(
        ok_cases, n,
        "a case started without its checks being counted"
    );
    assert!(ok_cases >= 33, "only {ok_cases} cases held");
    f.stop.cancel();
}
