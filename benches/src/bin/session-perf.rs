//! `session-perf`: one stream's throughput and CPU per GB through the QUIC
//! session layer, in one process (both ends on loopback, as the relay and
//! an agent set them up), for a side-by-side run with quinn's own perf
//! client and server (`benches/quinn-perf.sh`).
//!
//! Two ways over the same kind of connection, interleaved round by round:
//! `session`, the session layer's `Stream` as the relay and the agent use
//! it (`AsyncRead`/`AsyncWrite` through 256 KiB buffers), and `chunks`,
//! quinn's own `write_chunk`/`read_chunks` on a stream of a connection made
//! with the session layer's endpoints and settings (what quinn's perf tool
//! does: no copy in or out of the stream). The difference between the two
//! is what the byte-stream interface costs; the difference between
//! `chunks` and quinn's perf tool is what our settings cost.
//!
//! Prints one JSON line per round and way; CPU is this process's (both
//! ends), from `/proc/self/stat`.

use std::time::Instant;

use bytes::Bytes;
use tunnelgate_benches::{drain, fill, STREAM_BUF as BUF};

#[derive(Clone, Copy)]
enum Way {
    Session,
    SessionWrite,
    Chunks,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::SessionWrite => "session-write",
            Self::Chunks => "chunks",
        }
    }
}

fn main() {
    let mut bytes: u64 = 1 << 30;
    let mut rounds = 3u32;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage(&a))
        };
        match a.as_str() {
            "--bytes" => bytes = value(),
            "--rounds" => rounds = value() as u32,
            "--way" => only = Some(args.next().unwrap_or_else(|| usage(&a))),
            _ => usage(&a),
        }
    }
    // Two workers, as quinn's perf tool runs two single-threaded processes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for round in 0..rounds {
            for way in [Way::Session, Way::SessionWrite, Way::Chunks] {
                if only.as_deref().is_some_and(|o| o != way.name()) {
                    continue;
                }
                let cpu = cpu_secs();
                let started = Instant::now();
                transfer(way, bytes).await;
                let secs = started.elapsed().as_secs_f64();
                let gb = bytes as f64 / 1e9;
                println!(
                    "{{\"round\":{round},\"way\":\"{}\",\"bytes\":{bytes},\"gbit_s\":{:.3},\"cpu_s_per_gb\":{:.3}}}",
                    way.name(),
                    gb * 8.0 / secs,
                    (cpu_secs() - cpu) / gb
                );
            }
        }
    });
}

fn usage(arg: &str) -> ! {
    eprintln!("session-perf: unexpected {arg:?}\nusage: session-perf [--bytes N] [--rounds N] [--way session|session-write|chunks]");
    std::process::exit(2)
}

/// Sends `bytes` from the agent's end to the relay's over one new stream
/// of a new connection, as a download through the relay moves them.
async fn transfer(way: Way, bytes: u64) {
    let (relay, agent) = tunnelgate_benches::quic_pair().await;
    match way {
        Way::Session => {
            let relay = tunnelgate_session::Session::from_quic(relay);
            let writer = tokio::spawn(write_stream(agent, bytes));
            let (r, _w) = relay.accept_stream().await.expect("accept").into_split();
            assert_eq!(drain(r).await, bytes, "the stream lost bytes");
            writer.await.expect("writer");
        }
        Way::SessionWrite => {
            let writer = tokio::spawn(write_stream(agent, bytes));
            let (_w, r) = relay.accept_bi().await.expect("accept");
            assert_eq!(read_chunks(r).await, bytes, "the stream lost bytes");
            writer.await.expect("writer");
        }
        Way::Chunks => {
            let writer = tokio::spawn(async move {
                let (mut w, _) = agent.open_bi().await.expect("open");
                let chunk = Bytes::from(vec![0x5au8; BUF]);
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(BUF as u64) as usize;
                    w.write_chunk(chunk.slice(..n)).await.expect("write");
                    left -= n as u64;
                }
                w.finish().expect("finish");
                let _ = w.stopped().await;
                agent
            });
            let (_w, r) = relay.accept_bi().await.expect("accept");
            assert_eq!(read_chunks(r).await, bytes, "the stream lost bytes");
            writer.await.expect("writer");
        }
    }
}

/// Writes `bytes` into a new stream of the session layer, as the agent
/// writes a response: `AsyncWrite` from a 256 KiB buffer.
async fn write_stream(agent: quinn::Connection, bytes: u64) -> tunnelgate_session::Session {
    let agent = tunnelgate_session::Session::from_quic(agent);
    let (_, w) = agent.open_stream().await.expect("open").into_split();
    fill(w, bytes).await;
    agent
}

/// Reads a stream to its end with quinn's `read_chunks` (no copy out);
/// returns the bytes read.
async fn read_chunks(mut r: quinn::RecvStream) -> u64 {
    let mut bufs: [Bytes; 32] = std::array::from_fn(|_| Bytes::new());
    let mut got = 0u64;
    while let Some(n) = r.read_chunks(&mut bufs).await.expect("read") {
        got += bufs[..n].iter().map(|b| b.len() as u64).sum::<u64>();
    }
    got
}

/// This process's user + system CPU seconds so far.
fn cpu_secs() -> f64 {
    tunnelgate_loadtest::relay_proc::Usage::of(std::process::id())
        .expect("/proc/self/stat")
        .cpu_secs
}
