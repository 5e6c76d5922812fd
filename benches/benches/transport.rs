//! One stream through each transport, in process on loopback, against
//! plain TCP on loopback in the same run: what the session layer itself
//! costs, without HTTP, relay or agent.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench transport`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncRead, AsyncWrite};
use tunnelgate_benches::{drain, fill, session_pair};

const LEN: u64 = 256 * 1024 * 1024;

/// Starts writing `LEN` bytes into `w`, then a half-close.
fn spawn_writer(w: impl AsyncWrite + Unpin + Send + 'static) -> tokio::task::JoinHandle<()> {
    tokio::spawn(fill(w, LEN))
}

/// Reads `r` to its end; checks that all `LEN` bytes arrived.
async fn drain_all(r: impl AsyncRead + Unpin) {
    assert_eq!(drain(r).await, LEN);
}

fn stream(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("stream_256mib");
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(LEN))
        .measurement_time(Duration::from_secs(15));

    group.bench_function("tcp_plain", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("bound");
                let started = Instant::now();
                for _ in 0..iters {
                    let (client, accepted) =
                        tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
                    let (_, w) = client.expect("connect").into_split();
                    let (r, _w) = accepted.expect("accept").0.into_split();
                    let writer = spawn_writer(w);
                    drain_all(r).await;
                    writer.await.expect("writer");
                }
                started.elapsed()
            })
        })
    });
    for transport in ["quic", "tcp"] {
        let (relay, agent) = rt.block_on(session_pair(transport));
        let name = if transport == "quic" {
            "quic_stream"
        } else {
            "tls_yamux_stream"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        let (_, w) = relay.open_stream().await.expect("open").into_split();
                        // QUIC announces a stream to the peer only once bytes
                        // flow, so the writing starts before the accept.
                        let writer = spawn_writer(w);
                        let (r, _w) = agent.accept_stream().await.expect("accept").into_split();
                        drain_all(r).await;
                        writer.await.expect("writer");
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stream);
criterion_main!(benches);
