//! A kept-alive client connection's calls to one node go over one stream:
//! the relay keeps the stream of a connection's last call and sends the
//! next call to the same node on it. Real relay, agent and dockerd.
//!
//! Checked here: one stream for many calls (`streams_opened_total`); each
//! call's audit line counts its own bytes, not the stream's; a stream whose
//! session is gone (agent restarted) or that the idle timeout closed is not
//! used again, and the call goes on a new one without the client noticing.

#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// One kept-alive HTTP/1.1 client connection.
struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    fn connect(addr: std::net::SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Self {
            reader: BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        }
    }

    /// Sends `GET path`; returns the status and the body.
    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>().unwrap());
            }
            chunked |= line.starts_with("transfer-encoding:") && line.contains("chunked");
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(length.expect("a length or chunks"), 0);
            self.reader.read_exact(&mut body).unwrap();
        }
        (status, body)
    }
}

fn idle_hits(relay: &Relay) -> u64 {
    relay.metric("tunnelgate_relay_limit_hits_total{limit=\"idle_stream\"}")
}

fn streams_opened(relay: &Relay) -> u64 {
    let (_, text) = http_get(relay.metrics, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tunnelgate_relay_streams_opened_total "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_kept_alive_connections_calls_share_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let relay =
        Relay::start_with(&dir.path().join("relay"), &["--idle-stream-timeout", "2s"]).unwrap();
    let agent_dir = dir.path().join("agent");
    let token = relay.token().unwrap();
    let mut agent = AgentCmd::new(&relay, "kept", &docker_endpoint(), &agent_dir, Some(&token))
        .spawn()
        .unwrap();
    relay.wait_for_node("kept").unwrap();

    let opened_before = streams_opened(&relay);
    let mut client = KeepAlive::connect(relay.api);
    let mut ping_sizes = Vec::new();
    for _ in 0..5 {
        let (status, body) = client.get("/nodes/kept/_ping");
        assert_eq!((status, body.as_slice()), (200, &b"OK"[..]));
        ping_sizes.push(body.len());
    }
    let (status, version) = client.get("/nodes/kept/version");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&version));
    assert!(String::from_utf8_lossy(&version).contains("ApiVersion"));
    assert_eq!(
        streams_opened(&relay) - opened_before,
        1,
        "six calls on one client connection went over one stream"
    );

    // A second client connection gets a stream of its own.
    let mut other = KeepAlive::connect(relay.api);
    assert_eq!(other.get("/nodes/kept/_ping").0, 200);
    assert_eq!(streams_opened(&relay) - opened_before, 2);

    // Each call's audit line counts that call's bytes only: the five
    // pings are the same size although they shared a stream.
    let log = relay.log();
    let ping_bytes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tunnelgate::audit") && l.contains("path=/nodes/kept/_ping"))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("bytes_from_node="))
        })
        .collect();
    assert_eq!(ping_bytes.len(), 6, "{log}");
    assert!(
        ping_bytes.iter().all(|b| *b == ping_bytes[0]) && ping_bytes[0] != "bytes_from_node=0",
        "{ping_bytes:?}"
    );

    // The idle timeout closes both connections' kept streams (the relay
    // counts each); the next call opens another.
    let deadline = Instant::now() + Duration::from_secs(30);
    while idle_hits(&relay) < 2 {
        assert!(
            Instant::now() < deadline,
            "the kept stream was never cut for idleness"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.get("/nodes/kept/_ping").0, 200);
    assert_eq!(streams_opened(&relay) - opened_before, 3);

    // The agent restarts: its new session gets the call, not the stream of
    // the old one.
    let before = relay.wait_for_node("kept").unwrap()["connected_since"].clone();
    agent.kill();
    let _agent = AgentCmd::new(&relay, "kept", &docker_endpoint(), &agent_dir, None)
        .spawn()
        .unwrap();
    relay
        .wait_for("kept", |n| {
            n["connected_since"] != before && n["daemon_reachable"] == true
        })
        .unwrap();
    let (status, body) = client.get("/nodes/kept/_ping");
    assert_eq!((status, body.as_slice()), (200, &b"OK"[..]));
    assert_eq!(streams_opened(&relay) - opened_before, 4);
}
