//! Relayed versus direct, each group in one run so the ratio is read from
//! one machine state: a 1 GiB response (throughput) and a small call
//! (latency), over QUIC and over TLS/TCP with yamux.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench relay`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tunnelgate_benches::{Client, Fixture};

const GIB: u64 = 1024 * 1024 * 1024;

fn targets(fixture: &Fixture) -> [(&'static str, std::net::SocketAddr, &'static str); 3] {
    [
        ("direct", fixture.docker, ""),
        ("relay_quic", fixture.relay, "/nodes/bench-quic"),
        ("relay_tcp", fixture.relay, "/nodes/bench-tcp"),
    ]
}

fn bulk(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = rt.block_on(Fixture::start());
    let mut group = c.benchmark_group("bulk_1gib_response");
    group
        .sample_size(10)
        .throughput(Throughput::Bytes(GIB))
        .measurement_time(Duration::from_secs(20));
    for (name, addr, prefix) in targets(&fixture) {
        let path = format!("{prefix}/bulk?bytes={GIB}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut client = Client::new(addr);
                    let started = Instant::now();
                    for _ in 0..iters {
                        assert_eq!(client.get(&path).await.expect("download").0, GIB);
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
    fixture.stop();
}

fn small_call(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = rt.block_on(Fixture::start());
    let mut group = c.benchmark_group("small_call");
    for (name, addr, prefix) in targets(&fixture) {
        let path = format!("{prefix}/_ping");
        let mut client = Client::new(addr);
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async { assert_eq!(client.get(&path).await.expect("call").0, 2) })
            })
        });
    }
    group.finish();
    fixture.stop();
}

criterion_group!(benches, bulk, small_call);
criterion_main!(benches);
