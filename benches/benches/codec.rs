//! The per-call protocol work: encoding and decoding a stream header and
//! its reply, against copying the same bytes (the floor) in the same run.
//!
//! Run: `cargo bench -p tunnelgate-benches --bench codec`

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use tunnelgate_proto::frame::{self, DEFAULT_MAX_FRAME};
use tunnelgate_proto::message::{Message, StreamHeader, StreamKind, StreamReply};
use tunnelgate_proto::{NodeId, ProtocolVersion, RequestId};

fn codec(c: &mut Criterion) {
    let header = StreamHeader {
        version: ProtocolVersion::CURRENT,
        kind: StreamKind::DockerHttp,
        request_id: RequestId(0x1234_5678_9abc_def0),
        node_id: NodeId::new("web-01.eu-west").expect("valid id"),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    let mut wire = BytesMut::new();
    header
        .encode_frame(DEFAULT_MAX_FRAME, &mut wire)
        .expect("encodes");
    let wire = wire.freeze();

    let mut group = c.benchmark_group("stream_setup_codec");
    group.bench_function("copy_frame_bytes_baseline", |b| {
        b.iter(|| std::hint::black_box(wire.to_vec()))
    });
    group.bench_function("header_encode", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(256);
            header
                .encode_frame(DEFAULT_MAX_FRAME, &mut out)
                .expect("encodes");
            std::hint::black_box(out)
        })
    });
    group.bench_function("header_decode", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            let payload = frame::decode(&mut buf, DEFAULT_MAX_FRAME)
                .expect("valid")
                .expect("whole");
            std::hint::black_box(StreamHeader::decode(&payload).expect("decodes"))
        })
    });
    group.bench_function("reply_round_trip", |b| {
        b.iter(|| {
            let mut out = BytesMut::with_capacity(64);
            StreamReply::Accept
                .encode_frame(DEFAULT_MAX_FRAME, &mut out)
                .expect("encodes");
            let payload = frame::decode(&mut out, DEFAULT_MAX_FRAME)
                .expect("valid")
                .expect("whole");
            std::hint::black_box(StreamReply::decode(&payload).expect("decodes"))
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
